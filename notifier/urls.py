from django.urls import path

from notifier import views
from notifier.webhooks import esp_tracking_webhook

app_name = "notifier"

urlpatterns = [
    path("", views.home, name="home"),
    path("unsubscribe/<str:token>/", views.unsubscribe, name="unsubscribe"),
    path("preferences/<str:token>/", views.preferences, name="preferences"),
    path(
        "webhooks/anymail/<slug:esp>/tracking/",
        esp_tracking_webhook,
        name="esp_tracking_webhook",
    ),
]
