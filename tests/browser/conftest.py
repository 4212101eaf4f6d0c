"""Fixtures of the developer-portal browser tests: a gateway process (debug
build) with a sample backend and two APIs, and Debian's chromium driven by
Playwright. Every request a page makes and every console message is kept,
so the tests can check that nothing leaves 127.0.0.1 and nothing fails."""

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
import urllib.request
from urllib.parse import urlparse

import pytest
from playwright.sync_api import expect, sync_playwright

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
TARGET = os.environ.get("CARGO_TARGET_DIR", os.path.join(ROOT, "target"))
GATEWAY = os.path.join(TARGET, "debug", "tollgate-gateway")
ECHO = os.path.join(TARGET, "debug", "tollgate-echo")
CHROMIUM = os.environ.get("TOLLGATE_CHROMIUM", shutil.which("chromium") or "/usr/bin/chromium")
ADMIN_TOKEN = "portal-admin-token-0123456789abcdef"

# Assertions and actions wait up to 90 s (Playwright's defaults are 5 and
# 30 s): with both cores taken by other work (make test-under-load), parsing
# and rendering the 1.5 MB try-it console alone can take tens of seconds.
# Waiting longer changes no outcome, only when it is seen; every assertion
# waits for its condition, none for a time.
WAIT_MS = 90_000
expect.set_options(timeout=WAIT_MS)
SCREENSHOTS = os.environ.get("TOLLGATE_PORTAL_SCREENSHOTS", os.path.join(TARGET, "portal-screenshots"))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_http(url, timeout=60):
    deadline = time.time() + timeout
    while True:
        try:
            with urllib.request.urlopen(url, timeout=2) as r:
                if r.status == 200:
                    return
        except OSError:
            pass
        if time.time() > deadline:
            raise RuntimeError(f"{url} did not answer 200")
        time.sleep(0.1)


MANIFESTS = """apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: gold, namespace: bank}}
spec: {{limit: {{requests: 1000, per: 1m}}, keyBy: Consumer}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ThrottlePolicy
metadata: {{name: bronze, namespace: bank}}
spec: {{limit: {{requests: 10, per: 1m}}, keyBy: Consumer}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: accounts, namespace: bank}}
spec:
  apiManagerRef: {{name: local}}
  displayName: Account Information
  description: Balances and transactions of the accounts a customer consented to share.
  tags: [aisp, accounts]
  context: /open-banking/accounts
  version: v3.1
  backend: {{endpoints: [{{url: "http://{backend}"}}]}}
  security: {{apiKey: {{}}}}
  operations:
  - {{method: GET, path: /accounts}}
  - {{method: GET, path: "/accounts/{{accountId}}/balances"}}
---
apiVersion: tollgate.dev/v1alpha1
kind: ApiDeployment
metadata: {{name: payments, namespace: bank}}
spec:
  apiManagerRef: {{name: local}}
  displayName: Payment Initiation
  description: Domestic payment consents and submissions.
  tags: [pisp, payments]
  context: /open-banking/payments
  version: v3.1
  backend: {{endpoints: [{{url: "http://{backend}"}}]}}
  security: {{apiKey: {{}}}}
  operations:
  - {{method: POST, path: /domestic-payment-consents}}
  - {{method: GET, path: "/domestic-payments/{{paymentId}}"}}
  definition:
    document: |
      openapi: 3.0.3
      info:
        title: Payment Initiation API
        version: v3.1.10
        description: Initiate domestic payments a customer has consented to.
      servers:
      - url: http://payments.internal:9000/backend
      paths:
        /domestic-payment-consents:
          post:
            summary: Create a domestic payment consent
            description: Stages a payment for the customer to authorise at the bank.
            requestBody:
              content:
                application/json:
                  schema:
                    $ref: '#/components/schemas/OBWriteDomesticConsent4'
                  example:
                    Data:
                      Initiation:
                        InstructedAmount:
                          Amount: '165.88'
                          Currency: GBP
            responses:
              '201':
                description: Consent created
        /domestic-payments/{{paymentId}}:
          get:
            summary: Get a domestic payment
            responses:
              '200':
                description: The payment
        /file-payments:
          post:
            summary: Not served by this gateway
            responses:
              '201':
                description: File payment created
      components:
        schemas:
          OBWriteDomesticConsent4:
            type: object
            description: A domestic payment to consent to
            properties:
              Data:
                type: object
"""


class Env:
    def __init__(self):
        self.tmp = tempfile.mkdtemp(prefix="tollgate-portal-")
        self.procs = []
        backend = f"127.0.0.1:{free_port()}"
        self.procs.append(subprocess.Popen([ECHO, backend, "bank"], stdout=subprocess.DEVNULL))
        config = os.path.join(self.tmp, "config")
        os.makedirs(config)
        with open(os.path.join(config, "apis.yaml"), "w") as f:
            f.write(MANIFESTS.format(backend=backend))
        token = os.path.join(self.tmp, "admin-token")
        with open(token, "w") as f:
            f.write(ADMIN_TOKEN)
        self.http, self.mgmt = free_port(), free_port()
        self.gateway_url = f"http://127.0.0.1:{self.http}"
        self.portal = f"http://127.0.0.1:{self.mgmt}/portal/"
        self.log = os.path.join(self.tmp, "gateway.log")
        self.procs.append(subprocess.Popen(
            [GATEWAY, "--config-dir", config, "--data-dir", os.path.join(self.tmp, "data"),
             "--http", f"127.0.0.1:{self.http}", "--https", f"127.0.0.1:{free_port()}",
             "--management", f"127.0.0.1:{self.mgmt}", "--management-tls", f"127.0.0.1:{free_port()}",
             "--admin-token-file", token, "--analytics-flush-seconds", "1", "--threads", "2",
             "--portal-gateway-url", self.gateway_url, "--portal-name", "Example Bank developers"],
            stdout=open(self.log, "w"), stderr=subprocess.STDOUT))
        wait_http(f"http://127.0.0.1:{self.mgmt}/readyz")

    def call(self, path, key):
        """GET through the gateway with an API key: (status, body)."""
        req = urllib.request.Request(self.gateway_url + path, headers={"apikey": key})
        try:
            with urllib.request.urlopen(req, timeout=60) as r:
                return r.status, r.read().decode()
        except urllib.error.HTTPError as e:
            return e.code, e.read().decode()

    def stop(self):
        for p in self.procs:
            p.terminate()
        for p in self.procs:
            try:
                p.wait(timeout=15)
            except subprocess.TimeoutExpired:
                p.kill()
        shutil.rmtree(self.tmp, ignore_errors=True)


@pytest.fixture(scope="session")
def env():
    e = Env()
    yield e
    e.stop()


class Watch:
    """Every request and console message of the pages of a browser context."""

    def __init__(self):
        self.requests = []
        self.console_errors = []
        self.expected = []
        self.current = ""

    def expect_failure(self, url_part, status):
        """A page a test opens knowing it answers this 4xx (the browser logs it)."""
        self.expected.append((url_part, status))

    def unexpected_errors(self):
        def expected(e):
            url = e.split(": ", 1)[0]
            return "Failed to load resource" in e and any(
                part in url and f"status of {status} " in e for part, status in self.expected)
        return [e for e in self.console_errors if not expected(e)]

    def attach(self, context):
        # Every context of the tests comes through here: the same patience
        # for actions and navigations as for assertions.
        context.set_default_timeout(WAIT_MS)
        context.set_default_navigation_timeout(WAIT_MS)
        context.on("request", lambda r: self.requests.append(r.url))
        context.on("page", self._page)

    def _page(self, page):
        page.on("console", lambda m: m.type == "error" and self.console_errors.append(
            f"{(m.location or {}).get('url') or page.url}: {m.text} (in {self.current})"))
        page.on("pageerror", lambda e: self.console_errors.append(f"{page.url}: {e} (in {self.current})"))


@pytest.fixture(scope="session")
def watch():
    return Watch()


@pytest.fixture(autouse=True)
def _name_the_test(request, watch):
    watch.current = request.node.name


@pytest.fixture(scope="session")
def browser():
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, headless=True,
                              args=["--no-sandbox", "--disable-dev-shm-usage"])
        yield b
        b.close()


@pytest.fixture
def context(browser, watch):
    c = browser.new_context(viewport={"width": 1280, "height": 900})
    watch.attach(c)
    yield c
    c.close()


def shot(page, name):
    os.makedirs(SCREENSHOTS, exist_ok=True)
    page.screenshot(path=os.path.join(SCREENSHOTS, f"{name}.png"), full_page=True)


def host_of(url):
    return urlparse(url).hostname


def as_json(text):
    return json.loads(text)
