from django import forms
from django.contrib import messages
from django.shortcuts import redirect, render
from django.views.decorators.http import require_http_methods

from . import services
from .models import Client


class SignUpForm(forms.ModelForm):
    class Meta:
        model = Client
        fields = ["email"]


@require_http_methods(["GET", "POST"])
def sign_up(request):
    form = SignUpForm(request.POST or None)
    if form.is_valid():
        client = services.sign_up(form.cleaned_data["email"])
        messages.success(request, f"Welcome! A login link is on its way to {client.email}.")
        return redirect("sign_up")
    return render(request, "accounts/sign_up.html", {"form": form})
