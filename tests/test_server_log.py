"""The server log a presenter watches: one line for each ordinary user error, a traceback only for a real fault."""

import logging

import pytest
from app_fixtures import running_app

from scripts.load_test import local_client
from ui.lab import Lab
from ui.settings import AppSettings


def test_a_user_error_is_one_line_and_a_fault_keeps_its_traceback(
    settings: AppSettings, capfd: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    with running_app(settings) as served:
        client = local_client(served.url)
        with caplog.at_level(logging.WARNING, logger="lora_lab.app"):
            with pytest.raises(Exception, match="the message is empty"):
                client.predict("", None, api_name="/classify")
            with pytest.raises(Exception, match="no messages"):
                client.predict("\n\n", None, api_name="/classify_many")
        printed = capfd.readouterr()
        assert "Traceback" not in printed.err + printed.out
        lines = [record.getMessage() for record in caplog.records if record.name == "lora_lab.app"]
        assert lines == [
            "refused (classify): the message is empty: type a message to classify",
            "refused (classify_many): no messages: type or paste one message per line",
        ]

        def broken(self: Lab, *chosen: object) -> tuple[str, object]:
            raise RuntimeError("a real fault")

        monkeypatch.setattr(Lab, "classifier_for", broken)
        with pytest.raises(Exception):  # noqa: B017 - gradio_client reports a fault as a plain error
            client.predict("WIN a prize", None, api_name="/classify")
        printed = capfd.readouterr()
        assert "Traceback" in printed.err and "RuntimeError: a real fault" in printed.err
