from django.urls import path, re_path

from api import views

app_name = "api"

urlpatterns = [
    path("v1/messages", views.messages, name="messages"),
    path("v1/messages/<uuid:id>", views.message, name="message"),
    path("v1/events", views.events, name="events"),
    path("v1/subscriptions", views.subscriptions, name="subscriptions"),
    path(
        "v1/recipients/<str:email>/export",
        views.recipient_data_export,
        name="recipient_export",
    ),
    path("v1/openapi.json", views.openapi, name="openapi"),
    # Every other path under /api/, any character included (a percent-encoded
    # newline too, which "." would not match): a JSON 404.
    re_path(r"^[\s\S]*$", views.not_found),
]
