"""Both dashboards say "not enough data" instead of a month projected from seconds."""

from __future__ import annotations

from collections.abc import Callable

import pytest
from msgspec.structs import replace
from playwright.sync_api import Page

from metricstream.dashboard.tui import MetricsDashboard
from metricstream.protocol import MessageType, make_message

from ..protocol.test_messages import COST
from .test_tui import SIZE, recorded_store, screen_text
from .test_web import Console, ServeProcess, browser, open_page, serve, wait_in_page

__all__ = ["browser", "open_page", "serve"]  # fixtures used here, defined beside the web tests


@pytest.mark.parametrize("available", [False, True, None])
async def test_terminal_cost_panel(available: bool | None) -> None:
    store = recorded_store()
    costs = replace(COST, projection_available=available)
    if available is False:
        costs = replace(costs, projected_monthly_cost=0.0)
    store.apply(make_message(MessageType.COST_UPDATE, costs, sequence=100, timestamp=5_000))
    app = MetricsDashboard(store, source="ws://127.0.0.1:8765/metrics/stream")
    async with app.run_test(size=SIZE) as pilot:
        await pilot.pause()
        text = screen_text(app)
    if available is False:
        assert "Projected month: not enough data yet" in text
        assert "$0" not in text.split("Projected month:")[1].splitlines()[0]
    else:
        # A real projection (or one from a publisher that does not say) is shown.
        assert "Projected month: $1,080" in text


@pytest.mark.browser
def test_web_cost_panel_on_a_fresh_demo(
    serve: ServeProcess, open_page: Callable[..., tuple[Page, Console]]
) -> None:
    # A demo server that just started has seconds of spend: no projection.
    serve.start(seed=2)
    page, console = open_page(f"{serve.base}/?token=web-test-token")
    text = wait_in_page(
        page,
        "document.getElementById('costs')?.textContent.includes('not enough data')"
        " && document.getElementById('costs').textContent",
        15,
        "the cost panel",
    )
    assert "/ month" not in text
    assert console.errors == []
