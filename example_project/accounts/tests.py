"""The example project's own tests: a view that enqueues, tested with doctorjob.testing inside
Django's TestCase transaction (run with: python manage.py test example_project)."""

from datetime import timedelta

from django.test import TestCase
from django.urls import reverse
from django.utils import timezone

from doctorjob import PermanentError
from doctorjob.testing import assert_enqueued, enqueued, perform, run_jobs

from . import services
from .models import Client


class SignUpTests(TestCase):
    def test_signing_up_enqueues_the_login_link_and_running_it_sends_it(self):
        response = self.client.post(reverse("sign_up"), {"email": "ada@example.com"})

        self.assertRedirects(response, reverse("sign_up"))
        client = Client.objects.get(email="ada@example.com")
        assert_enqueued("accounts.send_login_link", {"client_id": client.pk}, queue="emails", count=1)
        [ran] = run_jobs()
        self.assertEqual((ran.outcome, ran.result), ("succeeded", {"sent_to": "ada@example.com"}))
        self.assertEqual(enqueued(), [])

    def test_a_sign_up_refused_by_the_form_enqueues_nothing(self):
        Client.objects.create(email="ada@example.com")

        response = self.client.post(reverse("sign_up"), {"email": "ada@example.com"})

        self.assertEqual(response.status_code, 200)
        self.assertEqual(enqueued(), [])

    def test_the_login_link_of_a_client_that_is_gone_is_not_retried(self):
        with self.assertRaisesMessage(PermanentError, "client 404 does not exist"):
            perform("accounts.send_login_link", {"client_id": 404})


class SignUpReportTests(TestCase):
    def test_the_report_runs_after_its_fetches_and_combines_them(self):
        today = timezone.localdate()
        Client.objects.create(email="ada@example.com")
        report = services.request_signup_report([today - timedelta(days=1), today])

        self.assertEqual(report.status, "waiting")
        names = [ran.job.name for ran in run_jobs()]

        self.assertEqual(names[-1], "accounts.write_signup_report")
        report.refresh_from_db()
        self.assertEqual(
            report.result,
            {
                "signups": {(today - timedelta(days=1)).isoformat(): 0, today.isoformat(): 1},
                "total": 1,
                "failed_fetches": 0,
            },
        )
