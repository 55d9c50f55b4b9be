"""Nothing one visitor sends may hurt the others: the login on every route and throttled, refused input as
one log line, files written for a visitor deleted with the uploads, and the command line's --host/--port."""

import time
from dataclasses import replace

import pytest
from app_fixtures import running_app
from conftest import sms_zip_bytes
from gradio_client import Client

from ui.settings import AppSettings

# --- downloads ---------------------------------------------------------------------------------------------------


@pytest.mark.slow
def test_downloads_of_different_visitors_run_side_by_side(settings: AppSettings, http_server) -> None:
    http_server.routes["/slow.zip"] = (200, sms_zip_bytes(), {})
    http_server.trickle["/slow.zip"] = 2.0  # 4 KiB every 2 s: the zip would take minutes
    with running_app(replace(settings, data_urls=(http_server.url("/slow.zip"),))) as running:
        visitors = [Client(running.url, verbose=False, analytics_enabled=False) for _ in range(2)]
        jobs = [visitor.submit(False, api_name="/download_data") for visitor in visitors]
        deadline = time.monotonic() + 120
        while http_server.hits.count("/slow.zip") < 2:  # the second reaches the source...
            assert time.monotonic() < deadline, [job.status().code for job in jobs]
            time.sleep(0.1)
        assert not jobs[0].done()  # ...while the first still downloads: not queued behind it
        visitors[0].predict(api_name="/stop_download")  # any visitor's Stop ends every Download
        assert all(job.result(timeout=60)[0].startswith("Download stopped; nothing was kept") for job in jobs)
