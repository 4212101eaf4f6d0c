"""The developer portal in a real browser (Debian's chromium, Playwright):
catalogue and search, an API page with its OpenAPI document, the whole
path from sign-up to a call through the gateway with the new key, wrong
passwords and their throttling, CSRF refusal, one developer's applications
hidden from another, an administrator disabling a developer, and no
request leaving 127.0.0.1 nor any console error on the way."""

import re
import time
import uuid

from playwright.sync_api import expect

from conftest import ADMIN_TOKEN, host_of, shot

PASSWORD = "correct horse battery staple"


def sign_up(page, env, email, password=PASSWORD):
    page.goto(env.portal + "signup")
    page.get_by_label("E-mail address", exact=True).fill(email)
    page.get_by_label("Password", exact=True).fill(password)
    page.get_by_role("button", name="Create account", exact=True).click()
    expect(page.get_by_role("heading", name="My applications", exact=True)).to_be_visible()


def create_app(page, name):
    page.get_by_label("Application name", exact=True).fill(name)
    page.get_by_role("button", name="Create application", exact=True).click()
    expect(page.get_by_role("heading", name=name, exact=True)).to_be_visible()
    return page.url.rsplit("/", 1)[1]


def email():
    return f"dev-{uuid.uuid4().hex[:10]}@tpp.example"


def test_catalogue_lists_and_searches_the_published_apis(context, env):
    page = context.new_page()
    page.goto(env.portal)
    expect(page).to_have_title(re.compile("APIs · Example Bank developers"))
    cards = page.locator("ul.cards > li")
    expect(cards).to_have_count(2)
    expect(page.get_by_role("link", name="Account Information", exact=True)).to_be_visible()
    shot(page, "catalogue")
    # Full text: a word of the description, a tag, an operation path.
    for query, want in (("consented", "Account Information"), ("pisp", "Payment Initiation"),
                        ("domestic-payment-consents", "Payment Initiation")):
        page.get_by_label("Search APIs", exact=True).fill(query)
        page.get_by_role("button", name="Search", exact=True).click()
        expect(cards).to_have_count(1)
        expect(cards.first.get_by_role("link", name=want, exact=True)).to_be_visible()
    page.get_by_label("Search APIs", exact=True).fill("no-such-word-anywhere")
    page.get_by_role("button", name="Search", exact=True).click()
    expect(page.get_by_text("No published API matches.", exact=True)).to_be_visible()


def test_api_page_renders_its_openapi_document(context, env):
    page = context.new_page()
    page.goto(env.portal)
    page.get_by_role("link", name="Account Information", exact=True).click()
    # The portal's own heading: swagger-ui renders the document's title as
    # another h1 ("Account Information v3.1 OAS 3.0") whenever it is done.
    expect(page.get_by_role("heading", level=1, name="Account Information", exact=True)).to_have_count(1)
    access = page.get_by_role("region", name="Access", exact=True)
    expect(access.get_by_text("API key in the apikey header", exact=True)).to_be_visible()
    tiers = page.get_by_role("region", name="Tiers", exact=True)
    expect(tiers.get_by_role("cell", name="gold", exact=True)).to_be_visible()
    expect(tiers.get_by_role("cell", name="1000 requests per 1 minute", exact=True)).to_be_visible()
    # Swagger UI (served by the gateway) renders both operations.
    swagger = page.locator("#swagger")
    expect(swagger.locator(".opblock-summary-path").get_by_text("/accounts/{accountId}/balances", exact=True)).to_be_visible()
    expect(page.locator("#swagger .opblock")).to_have_count(2)
    expect(page.locator("#swagger .servers")).to_contain_text(f"{env.gateway_url}/open-banking/accounts/v3.1")
    shot(page, "api")


def test_api_page_shows_its_definitions_descriptions_schemas_and_examples(context, env):
    # The payments API has an OpenAPI definition: the console shows its
    # words, schemas and examples, with the gateway as the server and only
    # the operations the gateway serves.
    page = context.new_page()
    page.goto(env.portal + "apis/bank/payments")
    expect(page.get_by_role("heading", level=1, name="Payment Initiation", exact=True)).to_have_count(1)
    swagger = page.locator("#swagger")
    expect(swagger.get_by_role("heading", name=re.compile(r"^Payment Initiation API"))).to_be_visible()
    expect(swagger.get_by_text("Initiate domestic payments a customer has consented to.", exact=True)).to_be_visible()
    expect(swagger.locator(".opblock")).to_have_count(2)
    expect(swagger.locator(".servers")).to_contain_text(f"{env.gateway_url}/open-banking/payments/v3.1")
    expect(swagger.locator(".servers")).not_to_contain_text("payments.internal")
    consent = swagger.locator(".opblock-post")
    expect(consent.locator(".opblock-summary-description")).to_have_text("Create a domestic payment consent")
    consent.locator(".opblock-summary-control").click()
    expect(consent.get_by_text("Stages a payment for the customer to authorise at the bank.", exact=True)).to_be_visible()
    expect(consent.locator(".body-param__example, .microlight").first).to_contain_text("165.88")
    models = swagger.locator("section.models")
    models.get_by_role("button", name="Schemas", exact=True).click()
    expect(models.get_by_text("OBWriteDomesticConsent4", exact=True)).to_be_visible()
    shot(page, "api-definition")


def test_sign_up_create_subscribe_get_a_key_and_call_the_api(context, env):
    page = context.new_page()
    sign_up(page, env, email())
    app_id = create_app(page, f"Budget helper {uuid.uuid4().hex[:6]}")
    page.get_by_label("API", exact=True).select_option("bank/accounts")
    page.get_by_label("Tier", exact=True).select_option("gold")
    page.get_by_role("button", name="Subscribe", exact=True).click()
    expect(page.get_by_role("cell", name="bank/accounts", exact=True).first).to_be_visible()
    page.get_by_label("Environment", exact=True).select_option("production")
    page.get_by_role("button", name="Generate API key", exact=True).click()
    key = page.locator("#api-key").inner_text().strip()
    assert key.startswith("tg_live_"), key
    status, body = env.call("/open-banking/accounts/v3.1/accounts", key)
    assert status == 200, body
    assert "bank" in body
    # The key is not shown again; its prefix is listed.
    page.goto(env.portal + f"applications/{app_id}")
    expect(page.locator("#api-key")).to_have_count(0)
    assert key not in page.content()
    expect(page.get_by_role("cell", name=re.compile(r"^tg_live_"))).to_have_count(1)
    # The call shows up in the usage table (rollups are written every second).
    usage = page.locator("table", has=page.get_by_role("columnheader", name="p95 latency", exact=True))
    # Reloaded until the rollup is there (a condition: however long the
    # machine takes to flush, bounded only by the generous deadline).
    deadline = time.time() + 180
    while usage.count() == 0 and time.time() < deadline:
        page.wait_for_timeout(500)
        page.reload()
    expect(usage.get_by_role("cell", name="bank/accounts", exact=True)).to_be_visible()
    expect(page.locator("svg.chart")).to_be_visible()
    shot(page, "application")
    # Not subscribed to payments: the gateway refuses the key there.
    assert env.call("/open-banking/payments/v3.1/domestic-payments/1", key)[0] == 403


def test_wrong_password_is_refused_and_repeated_failures_are_throttled(context, watch, env):
    watch.expect_failure("/portal/signin", 401)
    watch.expect_failure("/portal/signin", 429)
    page = context.new_page()
    address = email()
    sign_up(page, env, address)
    page.get_by_role("button", name="Sign out", exact=True).click()
    expect(page.get_by_role("status")).to_have_text("You are signed out.")
    for attempt in range(5):
        page.get_by_label("E-mail address", exact=True).fill(address)
        page.get_by_label("Password", exact=True).fill(f"wrong password {attempt}")
        page.get_by_role("button", name="Sign in", exact=True).click()
        expect(page.get_by_role("alert")).to_have_text("Wrong e-mail address or password.")
    # The sixth attempt, even with the right password, waits.
    page.get_by_label("E-mail address", exact=True).fill(address)
    page.get_by_label("Password", exact=True).fill(PASSWORD)
    page.get_by_role("button", name="Sign in", exact=True).click()
    expect(page.get_by_role("heading", name="Too many attempts", exact=True)).to_be_visible()


def test_a_form_without_the_sessions_token_is_refused(context, env):
    page = context.new_page()
    sign_up(page, env, email())
    for token in ("", "forged-token"):
        r = context.request.post(env.portal + "applications", form={"name": f"forged {token}", "csrf": token},
                                 max_redirects=0)
        assert r.status == 403, r.status
        assert "Form expired" in r.text()
    page.reload()
    expect(page.get_by_text(re.compile(r"^You have no application yet\."))).to_be_visible()


def test_a_developer_cannot_see_another_developers_applications(browser, watch, env):
    first, second = browser.new_context(), browser.new_context()
    watch.attach(first)
    watch.attach(second)
    a, b = first.new_page(), second.new_page()
    sign_up(a, env, email())
    app_id = create_app(a, f"Private app {uuid.uuid4().hex[:6]}")
    sign_up(b, env, email())
    expect(b.get_by_text(re.compile(r"^You have no application yet\."))).to_be_visible()
    watch.expect_failure(f"applications/{app_id}", 404)
    r = b.goto(env.portal + f"applications/{app_id}")
    assert r.status == 404
    expect(b.get_by_role("heading", name="Not found", exact=True)).to_be_visible()
    # Nor act on it.
    csrf = b.locator("input[name=csrf]").first.get_attribute("value")
    r = second.request.post(env.portal + f"applications/{app_id}/keys",
                            form={"environment": "production", "csrf": csrf})
    assert r.status == 404
    first.close()
    second.close()


def test_an_administrator_sees_every_application_and_disables_a_developer(browser, watch, env):
    dev_ctx, admin_ctx = browser.new_context(), browser.new_context()
    watch.attach(dev_ctx)
    watch.attach(admin_ctx)
    dev = dev_ctx.new_page()
    address = email()
    sign_up(dev, env, address)
    name = f"To be disabled {uuid.uuid4().hex[:6]}"
    create_app(dev, name)
    dev.get_by_label("API", exact=True).select_option("bank/payments")
    dev.get_by_label("Tier", exact=True).select_option("bronze")
    dev.get_by_role("button", name="Subscribe", exact=True).click()
    dev.get_by_role("button", name="Generate API key", exact=True).click()
    key = dev.locator("#api-key").inner_text().strip()
    assert env.call("/open-banking/payments/v3.1/domestic-payments/7", key)[0] == 200

    admin = admin_ctx.new_page()
    watch.expect_failure("/portal/admin", 403)
    watch.expect_failure("/portal/admin/signin", 401)
    admin.goto(env.portal + "admin")
    expect(admin.get_by_role("heading", name="Administrators only", exact=True)).to_be_visible()
    admin.goto(env.portal + "admin/signin")
    admin.get_by_label("Admin token", exact=True).fill("not the token")
    admin.get_by_role("button", name="Sign in", exact=True).click()
    expect(admin.get_by_role("alert")).to_have_text("Wrong admin token.")
    admin.get_by_label("Admin token", exact=True).fill(ADMIN_TOKEN)
    admin.get_by_role("button", name="Sign in", exact=True).click()
    expect(admin.get_by_role("heading", name="Administration", exact=True)).to_be_visible()
    row = admin.get_by_role("row").filter(has=admin.get_by_role("cell", name=name, exact=True))
    expect(row.get_by_role("cell", name=address, exact=True)).to_be_visible()
    shot(admin, "admin")
    admin.get_by_role("button", name=f"Disable {address}", exact=True).click()
    developer = admin.get_by_role("row").filter(has=admin.get_by_role("cell", name=address, exact=True))
    expect(developer.get_by_role("cell", name="disabled", exact=True)).to_be_visible()

    # The developer's session ends (back to the sign-in page) and the key stops working.
    dev.goto(env.portal + "applications")
    expect(dev.get_by_role("heading", name="Sign in", exact=True)).to_be_visible()
    assert env.call("/open-banking/payments/v3.1/domestic-payments/7", key)[0] in (401, 403)
    dev.goto(env.portal + "signin")
    dev.get_by_label("E-mail address", exact=True).fill(address)
    dev.get_by_label("Password", exact=True).fill(PASSWORD)
    dev.get_by_role("button", name="Sign in", exact=True).click()
    watch.expect_failure("/portal/signin", 403)
    expect(dev.get_by_role("heading", name="Account disabled", exact=True)).to_be_visible()
    dev_ctx.close()
    admin_ctx.close()


def test_pages_send_their_security_headers(context, env):
    page = context.new_page()
    r = page.goto(env.portal)
    h = r.headers
    assert "default-src 'none'" in h["content-security-policy"]
    assert f"connect-src 'self' {env.gateway_url}" in h["content-security-policy"]
    assert h["x-frame-options"] == "DENY"
    cookies = {c["name"]: c for c in context.cookies()}
    assert cookies["tollgate_form"]["httpOnly"] and cookies["tollgate_form"]["sameSite"] == "Lax"


def test_zz_no_request_left_loopback_and_no_console_errors(watch):
    # Runs last: every page the tests above opened.
    assert watch.requests, "the tests made requests"
    elsewhere = sorted({u for u in watch.requests if host_of(u) != "127.0.0.1"})
    assert not elsewhere, elsewhere
    assert not watch.unexpected_errors(), watch.unexpected_errors()
