from django.contrib import admin
from django.urls import include, path

admin.site.site_header = "Notifier"
admin.site.site_title = "Notifier admin"
admin.site.index_title = "Email and notifications"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api/", include("api.urls")),
    path("", include("ops.urls")),
    path("", include("notifier.urls")),
]
