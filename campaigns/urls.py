from django.urls import path

from campaigns import views

app_name = "campaigns"

urlpatterns = [
    path("subscribe/confirm/<str:token>/", views.signup_confirm_view, name="signup_confirm"),
    path("subscribe/<slug:slug>/", views.signup, name="signup"),
]
