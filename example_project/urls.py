from django.contrib import admin
from django.urls import path

from example_project.accounts import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("signup/", views.sign_up, name="sign_up"),
]
