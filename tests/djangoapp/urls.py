from django.contrib import admin
from django.urls import path

from tests.djangoapp import views

urlpatterns = [
    path("admin/", admin.site.urls),
    path("create", views.create),
    path("acreate", views.acreate),
    path("raw/<int:pk>", views.raw_update),
    path("atomic-fail", views.atomic_then_fail),
    path("write-fail", views.write_then_fail),
    path("ticket/<int:pk>", views.with_ticket),
    path("both", views.both_databases),
    path("bulk", views.bulk),
    path("pause/<int:pk>", views.pause),
]
