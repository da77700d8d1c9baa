from django.urls import path, re_path

from api import views

app_name = "api"

urlpatterns = [
    path("v1/messages", views.messages, name="messages"),
    path("v1/messages/<uuid:id>", views.message, name="message"),
    path("v1/events", views.events, name="events"),
    path("v1/openapi.json", views.openapi, name="openapi"),
    re_path(r"^(?P<rest>.*)$", views.not_found),
]
