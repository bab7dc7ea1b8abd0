"""``ember dashboard`` in a real browser: Debian's chromium, driven by Playwright, through a real session.

The session: a job that rebuilds a chain of store-resident arrays after its
object store is SIGKILLed (by pid, the store its own cluster started), runs a
task that fails with ``<script>`` in its error, names an actor ``<script>`` and kills its worker (it restarts and replays its calls),
and keeps running (submitting a task now and then) until the test lets it
end; and a ``chaos run`` that kills the store of another program's cluster
while it works (after 2,000 finished tasks). The dashboard is the CLI a user runs (``ember
dashboard --port 0``), read from its one printed line.

The browser checks what a person sees: the lineage graph's nodes and edges
(rebuilt tasks and lost objects marked), the failed task's error shown as
text, the fault shading on the chaos page (and in ``chaos run --html``'s
file, opened from disk), a live page that updates by itself while the job
runs, 401/403 without the token, and 4xx pages for bad input. Screenshots go
to a temporary folder (and to ``$EMBER_DASHBOARD_SCREENSHOTS`` when set: the
docs' come from there).

Every process started here is stopped here, by its pid; every wait is bounded.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import textwrap
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from playwright.sync_api import Browser, Page, sync_playwright

REPO = Path(__file__).resolve().parents[2]
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
BOUND_S = 120.0
UI_WAIT_MS = 30_000

JOB = textwrap.dedent("""
    import json, os, sys, time
    import numpy as np
    import ember
    from tests.fix_cluster import Counter
    from tests.fix_kill import kill_and_wait_for_the_next

    gate = sys.argv[1]
    ember.init(num_cpus=2)

    @ember.remote
    def zeros():
        return np.zeros(50_000)  # 400 KB: lives in the store

    @ember.remote
    def inc(a):
        return a + 1

    @ember.remote
    def boom(x):
        raise ValueError(f"<script>alert({x})</script> went wrong")

    @ember.remote
    def tick(i):
        return i

    chain = [zeros.remote()]
    for _ in range(3):
        chain.append(inc.remote(chain[-1]))
    assert ember.get(chain[-1], timeout=60)[0] == 3
    kill_and_wait_for_the_next("store")
    assert ember.get(chain[-1], timeout=60)[0] == 3  # rebuilt through the chain
    failed = boom.remote(7)
    try:
        ember.get(failed, timeout=60)
    except ValueError:
        pass
    counter = Counter.options(name="<script>counter</script>", max_restarts=1, max_task_retries=1).remote()
    assert ember.get([counter.add.remote(i) for i in range(3)], timeout=60)[-1] == 3
    from ember.chaos import processes
    from tests.fix_kill import sigkill
    sigkill([p.pid for p in processes() if p.actor_id][:1])  # its worker: the actor restarts and replays
    assert ember.get(counter.add.remote(10), timeout=60) == 13
    print(json.dumps({"job": ember.get_runtime_context().get_job_id(), "chain": [r.hex() for r in chain],
                      "failed": failed.task_id().hex()}), flush=True)
    deadline = time.monotonic() + 120
    i = 0
    while not os.path.exists(gate) and time.monotonic() < deadline:
        ember.get(tick.remote(i), timeout=60)  # the job keeps growing while the test watches
        i += 1
        time.sleep(0.3)
    ember.shutdown()
""")

CHAOS_PROGRAM = textwrap.dedent("""
    import time
    import numpy as np
    import ember

    ember.init(num_cpus=2)

    @ember.remote
    def leaf(i):
        return np.full(50_000, float(i))

    @ember.remote
    def total(a):
        return float(a.sum())

    leaves = [leaf.remote(i) for i in range(8)]
    deadline = time.monotonic() + 7.0
    while time.monotonic() < deadline:
        sums = ember.get([total.remote(x) for x in leaves], timeout=120)
        assert sums == [50_000.0 * i for i in range(8)], sums
    print("chaos program ok")
""")


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", "")}


def _read_line(proc: subprocess.Popen, bound_s: float, wanted: str = "") -> str:
    """The first stdout line of ``proc`` that starts with ``wanted``, waited for at most ``bound_s``."""
    found: list[str] = []

    def read() -> None:
        for line in proc.stdout:  # type: ignore[union-attr]
            if line.startswith(wanted):
                found.append(line.strip())
                return

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    reader.join(bound_s)
    assert found, f"no line starting {wanted!r} within {bound_s}s (exit {proc.poll()})"
    return found[0]


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
    if proc.stdout is not None:
        proc.stdout.close()


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("dashboard")
    os.chmod(path, 0o755)
    return path


@pytest.fixture(scope="module")
def chaos_run(workdir: Path, dashboard: str, browser: Browser, shots: Path) -> dict:
    """A chaos run, its page watched while it runs: live (refreshing itself), then its final state in place."""
    (workdir / "chaos_program.py").write_text(CHAOS_PROGRAM)
    html = workdir / "chaos.html"
    stderr = workdir / "chaos.stderr"
    with open(stderr, "w") as err:
        proc = subprocess.Popen(
            [sys.executable, "-m", "ember.chaos._cli", "run", "--kill", "store", "--every-tasks", "2000",
             "--max-faults", "1", "--seed", "3", "--html", str(html), "--", sys.executable, "chaos_program.py"],
            cwd=workdir, stdout=subprocess.DEVNULL, stderr=err, env=_env())
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    try:
        base, token = _base(dashboard), dashboard.split("token=")[1]
        run_id = _poll(lambda: next((r["run_id"] for r in _json(base, token, "/chaos?format=json")
                                     if r["ended_at"] is None), None), BOUND_S)
        assert run_id, "no chaos run was recorded while it ran"
        tab = context.new_page()
        tab.goto(f"{dashboard}")
        tab.goto(f"{base}/chaos/{run_id}")
        assert tab.locator("body").get_attribute("data-live") == "1"
        assert "(running)" in tab.locator("dl.facts").inner_text()
        shots.mkdir(exist_ok=True)
        _shot(tab, shots, "chaos-live")
        # The run ends; the page, never reloaded, turns into the final record by itself.
        tab.wait_for_function("() => document.body.getAttribute('data-live') === '0'", timeout=BOUND_S * 2000)
        assert tab.locator("svg.throughput rect.fault-kill-store").count() >= 1
        assert tab.locator("body").get_attribute("data-refreshed")
        proc.wait(BOUND_S)
    finally:
        context.close()
        _stop(proc)
    # What the program made of the fault is the runtime's business (tests/chaos check it); whatever its
    # exit, the run is recorded and its page must show it.
    text = stderr.read_text()
    assert f"chaos run {run_id}" in text, text
    return {"run_id": run_id, "html": html, "stderr": text}


def _json(base: str, token: str, path: str) -> Any:
    request = urllib.request.Request(base + path, headers={"Authorization": f"Bearer {token}"})
    with urllib.request.urlopen(request, timeout=30) as answer:
        return json.loads(answer.read())


def _poll(read: Callable[[], Any], bound_s: float) -> Any:
    """``read()`` until it answers; a 503 (the log is still empty: nothing has run yet) is no answer."""
    deadline = time.monotonic() + bound_s
    while time.monotonic() < deadline:
        try:
            found = read()
        except urllib.error.HTTPError as exc:
            exc.close()  # the error holds the answer's connection
            if exc.code != 503:
                raise
            found = None
        if found:
            return found
        time.sleep(0.2)
    return None


@pytest.fixture(scope="module")
def job(workdir: Path, chaos_run: dict) -> Iterator[dict]:
    (workdir / "job.py").write_text(JOB)
    gate = workdir / "gate"
    proc = subprocess.Popen([sys.executable, "job.py", str(gate)], cwd=workdir, stdout=subprocess.PIPE, text=True,
                            env=_env())
    try:
        ids = json.loads(_read_line(proc, BOUND_S, "{"))
        yield {**ids, "proc": proc, "gate": gate}
    finally:
        gate.touch()
        try:
            proc.wait(BOUND_S)
        finally:
            _stop(proc)


@pytest.fixture(scope="module")
def dashboard() -> Iterator[str]:
    proc = subprocess.Popen([sys.executable, "-m", "ember._cli", "dashboard", "--port", "0"], stdout=subprocess.PIPE,
                            text=True, env=_env())
    try:
        yield _read_line(proc, BOUND_S, "http")
    finally:
        _stop(proc)


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    assert os.path.exists(CHROMIUM), "Debian's chromium is missing: apt-get install -y chromium (.ci/run does)"
    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            yield chromium
        finally:
            chromium.close()


@pytest.fixture(scope="module")
def shots(workdir: Path) -> Path:
    return workdir / "screenshots"


@pytest.fixture(scope="module")
def page(browser: Browser, dashboard: str, shots: Path) -> Iterator[Page]:
    context = browser.new_context(viewport={"width": 1280, "height": 860})
    tab = context.new_page()
    dialogs: list[str] = []
    tab.on("dialog", lambda d: (dialogs.append(d.message), d.dismiss()))
    first = tab.goto(dashboard)  # the printed URL: the token is in it, the cookie set from it
    assert first is not None and first.status == 200
    shots.mkdir(exist_ok=True)
    yield tab
    context.close()
    assert not dialogs, f"a script from the log ran: {dialogs}"


def _base(url: str) -> str:
    return url.split("/?token=")[0]


def _shot(tab: Page, shots: Path, name: str) -> None:
    tab.screenshot(path=str(shots / f"{name}.png"), full_page=True)
    keep = os.environ.get("EMBER_DASHBOARD_SCREENSHOTS")
    if keep:
        Path(keep).mkdir(parents=True, exist_ok=True)
        shutil.copy(shots / f"{name}.png", Path(keep) / f"dashboard-{name}.png")


def test_without_the_token_the_answer_is_401_and_with_a_wrong_one_403(dashboard: str, browser: Browser, job: dict):
    base = _base(dashboard)
    for path, status in [("/", 401), ("/?token=wrong", 403), ("/task/00?format=json", 401),
                         ("/static/live.js", 401)]:
        with pytest.raises(urllib.error.HTTPError) as refused:
            urllib.request.urlopen(base + path, timeout=30)
        refused.value.close()  # the error holds the answer's connection
        assert refused.value.code == status, path
    stranger = browser.new_context()  # no cookie, no token: what another local user gets
    try:
        response = stranger.new_page().goto(base + "/")
        assert response is not None and response.status == 401
    finally:
        stranger.close()
    with urllib.request.urlopen(dashboard, timeout=30) as answer:
        assert "default-src 'self'" in answer.headers["Content-Security-Policy"]
        body = answer.read().decode()
    assert not re.search(r"(src|href)=\"(https?:)?//", body), "a reference to another host"


def test_the_lineage_graph_shows_the_chain_its_edges_and_the_rebuild(page: Page, dashboard: str, job: dict,
                                                                    shots: Path):
    last = job["chain"][-1]
    url = f"{_base(dashboard)}/lineage/{last}?depth=10"

    def lost_shown() -> bool:  # the GCS service logs the store's death as the node reports it, a moment later
        page.goto(url)
        return "lost" in (page.locator(f'svg.dag g.node[data-id="{job["chain"][0]}"]').get_attribute("class") or "")

    assert _poll(lost_shown, BOUND_S), "the lost objects are not marked"
    drawn = {g.get_attribute("data-id") for g in page.locator("svg.dag g.node").all()}
    tasks = {ref[:32] for ref in job["chain"]}
    assert set(job["chain"]) | tasks <= drawn
    edges = {(e.get_attribute("data-from"), e.get_attribute("data-to")) for e in page.locator("svg.dag path.edge").all()}
    for made_from, made in zip(job["chain"], job["chain"][1:]):
        assert (made_from, made[:32]) in edges  # the object read by the next task
        assert (made[:32], made) in edges  # the task made its result
    for ref in job["chain"]:
        assert "rebuilt" in page.locator(f'svg.dag g.node[data-id="{ref[:32]}"]').get_attribute("class")
        assert "lost" in page.locator(f'svg.dag g.node[data-id="{ref}"]').get_attribute("class")
    assert page.locator(f'svg.dag g.node[data-id="{last}"] text').first.text_content().startswith(last[:8])
    _shot(page, shots, "lineage")
    page.goto(f"{_base(dashboard)}/lineage/{job['chain'][0]}?dir=down&depth=10")  # what was made from the first
    below = {g.get_attribute("data-id") for g in page.locator("svg.dag g.node").all()}
    assert set(job["chain"]) | {ref[:32] for ref in job["chain"][1:]} <= below
    page.locator(f'svg.dag g.node[data-id="{job["chain"][1][:32]}"] a').click()  # through to a task's detail
    page.wait_for_url(re.compile(rf"/task/{job['chain'][1][:32]}"))
    page.goto(url)
    page.locator(f'svg.dag g.node[data-id="{job["chain"][0][:32]}"] a').click()
    page.wait_for_url(re.compile(rf"/task/{job['chain'][0][:32]}"))
    assert "rebuild (results lost)" in page.locator("main").inner_text()


def test_the_failed_tasks_page_shows_its_error_as_text(page: Page, dashboard: str, job: dict, shots: Path):
    base = _base(dashboard)
    page.goto(f"{base}/job/{job['job']}/tasks?state=FAILED")
    rows = page.locator("table.tasks tbody tr")
    assert rows.count() == 1
    assert f"ember replay {job['failed']} --pdb" in rows.first.inner_text()
    _shot(page, shots, "tasks-failed")
    rows.first.locator("a.id").first.click()
    page.wait_for_url(re.compile(rf"/task/{job['failed']}"))
    error = page.locator("pre.traceback").first.inner_text()
    assert "ValueError" in error and "<script>alert(7)</script> went wrong" in error  # shown, not run
    assert "Traceback" in error or "line" in error
    _shot(page, shots, "task-failed")
    page.goto(f"{base}/job/{job['job']}/actors")
    assert "<script>counter</script>" in page.locator("table").inner_text()
    page.locator("table a.id").first.click()  # the actor: its lives, the restart's cause, the calls it replayed
    lives = page.locator("table").first.locator("tbody tr")
    assert lives.count() == 2
    restart = lives.nth(1).locator("td")
    assert restart.nth(1).inner_text() == "restart"
    assert int(restart.nth(7).inner_text()) >= 3  # the three calls logged before it (the next may be too)
    assert "killed by SIGKILL" in lives.nth(0).inner_text()
    _shot(page, shots, "actor")


def test_the_chaos_page_shades_each_fault_and_says_when_the_job_recovered(page: Page, dashboard: str,
                                                                          chaos_run: dict, shots: Path):
    page.goto(f"{_base(dashboard)}/chaos")
    page.locator(f'a[href="/chaos/{chaos_run["run_id"]}"]').click()
    page.wait_for_selector("svg.throughput")
    shaded = page.locator("svg.throughput rect.fault-kill-store")
    assert shaded.count() >= 1
    assert float(shaded.first.get_attribute("width")) > 0
    assert page.locator("svg.throughput rect.bar").count() >= 3  # tasks finished in several seconds
    faults = page.locator("table.faults tbody tr")
    assert faults.count() == shaded.count()
    assert "kill-store" in faults.first.inner_text()
    _shot(page, shots, "chaos")


def test_chaos_run_html_is_one_file_that_opens_with_no_network(browser: Browser, chaos_run: dict, shots: Path):
    text = chaos_run["html"].read_text()
    assert not re.search(r"(src|href)=\"(https?:)?//", text) and "<script" not in text
    offline = browser.new_context(offline=True)
    try:
        tab = offline.new_page()
        tab.goto(chaos_run["html"].as_uri())
        assert tab.locator("svg.throughput rect.fault-kill-store").count() >= 1
        assert tab.locator("table.faults tbody tr").count() >= 1
    finally:
        offline.close()


def test_bad_input_gets_a_clear_4xx_page(page: Page, dashboard: str, job: dict):
    base = _base(dashboard)
    for path, status, says in [(f"/task/{'ab' * 16}", 404, "no task"), ("/task/abc", 404, "not a task"),
                               (f"/job/{job['job']}/tasks?state=BOGUS", 400, "not a state"),
                               (f"/job/{job['job']}/tasks?since=yesterday", 400, "ISO 8601"),
                               (f"/lineage/{job['chain'][0]}?depth=0", 400, "depth"), ("/nowhere", 404, "no page"),
                               ("/job/ffffffffff", 404, "no job")]:
        response = page.goto(base + path)
        assert response is not None and response.status == status, path
        assert says in page.locator("p.error").inner_text(), path


def test_the_timeline_and_the_nodes_show_the_store_death(page: Page, dashboard: str, job: dict, shots: Path):
    base = _base(dashboard)
    page.goto(f"{base}/job/{job['job']}/timeline")
    assert page.locator("svg.timeline rect.run.rebuild").count() >= len(job["chain"])
    assert page.locator("svg.timeline g.death.d-store").count() >= 1
    _shot(page, shots, "timeline")
    page.goto(f"{base}/job/{job['job']}/nodes")
    assert "store" in page.locator("table").inner_text()


def test_a_live_page_updates_by_itself_and_stops_when_the_job_ends(page: Page, dashboard: str, job: dict,
                                                                  shots: Path):
    page.goto(f"{_base(dashboard)}/job/{job['job']}")
    assert page.locator("body").get_attribute("data-live") == "1"
    count = page.locator("dl.facts dd").nth(5)
    before = int(count.inner_text().replace(",", ""))
    _shot(page, shots, "job-live")
    page.wait_for_function(  # the job submits a task every 0.3 s; the page shows more, with no reload
        "n => parseInt(document.querySelectorAll('dl.facts dd')[5].innerText.replace(/,/g, '')) > n", arg=before,
        timeout=UI_WAIT_MS)
    assert page.locator("body").get_attribute("data-refreshed")
    job["gate"].touch()
    job["proc"].wait(BOUND_S)
    page.wait_for_function("() => document.body.getAttribute('data-live') === '0'", timeout=UI_WAIT_MS)
    assert "FINISHED" in page.locator("dl.facts").inner_text()
    page.goto(_base(dashboard) + "/")
    _shot(page, shots, "jobs")


@pytest.mark.usefixtures("private_runtime_dir")
def test_start_head_with_dashboard_serves_it_until_the_node_stops():
    from ember.scheduler._node import free_port

    def ember_cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([sys.executable, "-m", "ember._cli", *args], capture_output=True, text=True,
                              timeout=BOUND_S, env=_env())

    started = ember_cli("start", "--head", "--port", str(free_port()), "--num-cpus", "1", "--dashboard",
                        "--dashboard-port", "0")
    try:
        assert started.returncode == 0, started.stdout + started.stderr
        url = next(line for line in started.stdout.splitlines() if line.startswith("http"))
        with urllib.request.urlopen(url, timeout=30) as answer:
            assert answer.status == 200 and "<h1>jobs</h1>" in answer.read().decode()
    finally:
        stopped = ember_cli("stop")
    assert stopped.returncode == 0, stopped.stderr
    deadline = time.monotonic() + BOUND_S  # the dashboard follows its head node's daemon out
    while time.monotonic() < deadline:
        try:
            urllib.request.urlopen(url, timeout=5).close()
        except urllib.error.HTTPError as refused:
            refused.close()
        except OSError as exc:  # refused: nothing listens any more (a reset may come while it closes)
            if isinstance(getattr(exc, "reason", exc), ConnectionRefusedError):
                break
        time.sleep(0.2)
    else:
        raise AssertionError(f"the dashboard at {url} still answers {BOUND_S}s after `ember stop`")


def test_the_json_twins_are_what_ember_list_and_ember_lineage_print(dashboard: str, job: dict):
    base, token = _base(dashboard), dashboard.split("token=")[1]

    def twin(path: str) -> Any:
        return _json(base, token, path)

    def cli(*args: str) -> object:
        done = subprocess.run([sys.executable, "-m", "ember._cli", *args, "--format", "json"], capture_output=True,
                              text=True, timeout=BOUND_S, env=_env())
        assert done.returncode == 0, done.stderr
        return json.loads(done.stdout)

    jid = job["job"]
    rebuilt = twin(f"/job/{jid}/tasks?rebuilt=1&format=json")
    assert {t["task_id"] for t in rebuilt} == {ref[:32] for ref in job["chain"]}
    assert rebuilt == cli("list", "tasks", "--job", jid, "--rebuilt")
    assert twin(f"/job/{jid}/tasks?function=inc&limit=100&format=json") == \
        cli("list", "tasks", "--job", jid, "--function", "inc", "--limit", "100")
    node = rebuilt[0]["node_id"]
    assert twin(f"/job/{jid}/tasks?rebuilt=1&node={node[:6]}&format=json") == rebuilt
    assert twin(f"/job/{jid}/tasks?since=2000-01-01T00:00:00Z&until=2000-01-02T00:00:00Z&format=json") == []
    assert len(twin(f"/job/{jid}/tasks?since=2000-01-01T00:00:00Z&error=went+wrong&format=json")) == 1
    graph = twin(f"/lineage/{job['chain'][-1]}?depth=10&format=json")
    printed = cli("lineage", job["chain"][-1], "--depth", "10")
    assert {k: v for k, v in graph.items() if k not in ("direction", "drawn")} == printed
