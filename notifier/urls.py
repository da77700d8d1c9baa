from django.urls import path

from notifier import views

app_name = "notifier"

urlpatterns = [
    path("", views.home, name="home"),
]
