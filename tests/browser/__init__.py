"""Helpers for the browser tests: the server with its web page, and Chromium."""
