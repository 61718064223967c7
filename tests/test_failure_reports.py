"""A failing test's report shows its fixtures' arguments: the database URL's password stays out."""

import pytest
from support.db import RedactedUrl

URL = "postgresql://postgres:s3cret-pw@127.0.0.1:15432/society"


def _uses(database_url: str) -> None:
    assert database_url.endswith("/nowhere")


def test_the_url_is_the_url() -> None:
    url = RedactedUrl(URL)
    assert url == URL and str(url) == URL and f"{url}" == URL


def test_a_failure_report_hides_the_password() -> None:
    with pytest.raises(AssertionError) as info:
        _uses(RedactedUrl(URL))
    report = str(info.getrepr(funcargs=True, style="long"))
    assert "database_url = 'postgresql://postgres:***@127.0.0.1:15432/society'" in report
    assert "s3cret-pw" not in report
