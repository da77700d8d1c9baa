from django.contrib import admin
from django.urls import include, path
from django.views import defaults

from api.views import is_api_path
from api.views import not_found as api_not_found

admin.site.site_header = "Notifier"
admin.site.site_title = "Notifier admin"
admin.site.index_title = "Email and notifications"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("api", api_not_found),
    path("api/", include("api.urls")),
    path("", include("ops.urls")),
    path("", include("campaigns.urls")),
    path("", include("notifier.urls")),
]


def handler404(request, exception):
    """JSON under /api/ (clients parse it), the usual page elsewhere."""
    if is_api_path(request.path):
        return api_not_found(request)
    return defaults.page_not_found(request, exception)
