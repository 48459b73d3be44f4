"""A minimal Django app for tests/test_contrib_django.py (configured by that module)."""
