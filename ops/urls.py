from django.urls import path

from ops import health, metrics

app_name = "ops"

urlpatterns = [
    path("health/", health.health, name="health"),
    path("health/live/", health.live, name="live"),
    path("metrics", metrics.metrics, name="metrics"),
]
