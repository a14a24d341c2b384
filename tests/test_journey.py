#!/usr/bin/env python3
"""The subscription journey in a real browser (TAP): headless Chromium with
JavaScript off, driven through chromedriver (tests/webdriver.py says why),
against Apache, PostgreSQL and the Stripe simulator (tests/simulator.py).

A user signs in (a JWT), the app asks for a Checkout Session through Apache,
the browser opens its URL and pays with each of Stripe's test cards, lands on
the success URL (or sees the decline), and the database and GET /api/usage
say what the app knows.  Then simulated time passes, through the dashboard's
button and the control API: trial reminders, trial end with a paid and a
failed first invoice, a card fixed in the Billing Portal, the retries ending
in a cancellation, a plan changed and canceled in the portal ending at period
end, a renewal; the database after each step.

Screenshots of every page: $BUILDDIR/tests/journey/*.png (look at them).
The webhooks run in refetch mode here (what a stack with a Stripe key runs);
tests/test_simulator.py runs them in event mode."""
import os
import sys
import time
import urllib.parse

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from harness import Stack, Tap, make_jwt  # noqa: E402
from test_simulator import (CARD_3DS, CARD_FAILS, CARD_NSF, CARD_OK, DAY,  # noqa: E402
                            SIM_SETTINGS, Sim, period, sub_of, user_row)
from webdriver import Browser  # noqa: E402

SHOTS = os.path.join(os.environ.get("BUILDDIR") or os.getcwd(), "tests", "journey")


def jwt(user):
    now = int(time.time())
    return make_jwt({"sub": user, "iat": now, "exp": now + 3600})


def usage(st, user):
    """GET /api/usage as the user (JWT) -> (tier, status)."""
    r = st.http("GET", "/api/usage?userId=" + urllib.parse.quote(user),
                headers={"Authorization": "Bearer " + jwt(user)})
    j = r.json() or {}
    return j.get("tier"), j.get("status")


class Journey:
    def __init__(self, t, st, sim, b):
        self.t, self.st, self.sim, self.b = t, st, sim, b
        self.n = 0

    def shot(self, name):
        self.n += 1
        return self.b.screenshot("%02d-%s" % (self.n, name))

    def fill_card(self, card):
        b = self.b
        b.type("#card_number", card)
        b.type("#card_expiry", "12 / 34")
        b.type("#card_cvc", "123")

    def checkout(self, user, tier, interval, card):
        """Checkout through the page; -> the URL the browser ends on."""
        t, b, sim = self.t, self.b, self.sim
        url = sim.checkout(user, tier, interval)
        b.get(url)
        last4 = card.replace(" ", "")[-4:]
        self.shot("checkout-%s-%s" % (tier, last4))
        self.fill_card(card)
        b.type("#name", "Ada Lovelace")
        b.type("#postal_code", "10001")
        b.click("#submit")
        if card == CARD_3DS:
            t.ok("/authenticate/" in b.current_url(), "%s: 3155 asks for authentication" % user,
                 b.current_url())
            self.shot("authenticate-%s" % last4)
            b.click("#complete")
        sim.wait()
        return url, b.current_url()

    def landed(self, user, url, where):
        sid = url.rsplit("/", 1)[1]
        ok = where == self.sim.base + "/demo/success?session_id=" + sid
        self.t.ok(ok and sid in self.b.text("#session"),
                  "%s: on the success URL with the session id" % user, where)
        self.shot("success-%s" % user)


def expect(t, st, user, name, status, tier, **more):
    row = user_row(st, user)
    got = {"status": row and row["status"], "usage": usage(st, user)}
    want = {"status": status, "usage": (tier, status if status else "none")}
    for k, v in more.items():
        got[k] = row and row[k]
        want[k] = v
    t.eq(got, want, "%s: %s" % (user, name))


def run(t, st, sim, b):
    j = Journey(t, st, sim, b)
    url, where = j.checkout("j_4242", "pro", "monthly", CARD_OK)
    j.landed("j_4242", url, where)
    expect(t, st, "j_4242", "4242 -> trialing pro", "trialing", "pro")

    url, where = j.checkout("j_0341", "pro", "monthly", CARD_FAILS)
    j.landed("j_0341", url, where)
    expect(t, st, "j_0341", "0341 with a trial -> trialing pro", "trialing", "pro")

    url, where = j.checkout("j_3155", "basic", "yearly", CARD_3DS)
    j.landed("j_3155", url, where)
    expect(t, st, "j_3155", "3155 after the confirm step -> active basic", "active", "basic",
           billing_interval="yearly")

    url, where = j.checkout("j_9995", "basic", "monthly", CARD_NSF)
    t.ok(where == url and b.text("#error") == "Your card has insufficient funds.",
         "j_9995: still on the checkout page, with the decline", (where, b.finds("#error")))
    j.shot("declined-9995")
    expect(t, st, "j_9995", "9995 -> nothing", None, "free")

    url, where = j.checkout("j_fix", "pro", "monthly", CARD_FAILS)
    j.landed("j_fix", url, where)
    url, where = j.checkout("j_port", "basic", "monthly", CARD_OK)
    j.landed("j_port", url, where)
    expect(t, st, "j_port", "4242 without a trial -> active basic", "active", "basic")

    # The Billing Portal (a session from the app): change plan, cancel, renew, cancel again.
    port_cus = user_row(st, "j_port")["stripe_customer_id"]
    portal_url = sim.app_portal("j_port")
    t.ok(portal_url.startswith(sim.base + "/p/session/"),
         "POST /api/stripe/portal-session: the simulator's portal page", portal_url)
    b.get(portal_url)
    j.shot("portal")
    b.select("#price", "price_pro_monthly")
    b.click("#update-plan")
    sim.wait()
    t.ok("Your plan is now Pro" in b.text("#done"), "portal: plan changed", b.current_url())
    expect(t, st, "j_port", "portal plan change -> pro", "active", "pro")
    b.click("#cancel-plan")
    sim.wait()
    j.shot("portal-canceled")
    expect(t, st, "j_port", "portal cancel -> cancels at period end", "active", "pro",
           cancel_at_period_end="t")
    b.click("#resume-plan")
    sim.wait()
    expect(t, st, "j_port", "portal renew -> renews", "active", "pro", cancel_at_period_end="f")
    b.click("#cancel-plan")
    sim.wait()
    expect(t, st, "j_port", "portal cancel again", "active", "pro", cancel_at_period_end="t")
    b.click("#return")
    t.eq(b.current_url(), sim.base + "/", "portal: back to the return_url")

    objs = sim.objects()
    ends = {u: sub_of(objs, user_row(st, u)["stripe_customer_id"])["trial_end"]
            for u in ("j_4242", "j_0341", "j_fix")}
    trial_end = max(ends.values())  # the checkouts were seconds apart
    r = sim.advance(to=trial_end - 3 * DAY)
    warned = sorted(e["object"] for e in r["events"]
                    if e["type"] == "customer.subscription.trial_will_end")
    t.eq((len(warned), int(st.psql_one("SELECT count(*) FROM notifications"))), (3, 3),
         "3 days before the trials end: trial_will_end for each trial, a notification each")
    expect(t, st, "j_4242", "still trialing", "trialing", "pro")

    # Three more days with the dashboard's button: the trials end.
    b.get(sim.base + "/")
    j.shot("dashboard-before-trial-end")
    b.click("#advance-3d")
    sim.wait()
    t.ok("Advanced 3d" in b.text("#done"), "dashboard: +3d advanced the clock", b.current_url())
    j.shot("dashboard-after-trial-end")
    expect(t, st, "j_4242", "trial end, invoice paid -> active", "active", "pro",
           trial_end=ends["j_4242"])
    expect(t, st, "j_0341", "trial end, payment failed -> past_due", "past_due", "pro")
    expect(t, st, "j_fix", "trial end, payment failed -> past_due", "past_due", "pro")

    # j_fix enters a working card (the app opens the portal's payment_method_update
    # flow): the open invoice is paid at once, the browser goes back to the app.
    b.get(sim.app_portal("j_fix", flow="payment_method_update"))
    t.eq((b.finds("#update-plan"), b.finds("#cancel-plan"), len(b.finds("#save-card"))),
         ([], [], 1), "portal flow payment_method_update: only the card form")
    j.fill_card(CARD_OK)
    j.shot("portal-new-card")
    b.click("#save-card")
    sim.wait()
    t.eq(b.current_url(), sim.base + "/", "portal flow done: back to the returnUrl")
    j.shot("portal-card-saved")
    expect(t, st, "j_fix", "new card -> invoice paid -> active", "active", "pro")

    # The failing card's retries: 3, 5 and 7 days later; then canceled.
    sim.advance(to=trial_end + 8 * DAY)
    expect(t, st, "j_0341", "two retries failed -> still past_due", "past_due", "pro")
    sim.advance(to=trial_end + 15 * DAY)
    expect(t, st, "j_0341", "last retry failed -> canceled", "canceled", "free",
           cancellation_reason="payment_failed")

    # j_port's period ends: canceled as asked.
    end = period(sub_of(sim.objects(), port_cus))[1]
    sim.advance(to=max(end, sim.now()))
    expect(t, st, "j_port", "period end -> canceled", "canceled", "free",
           cancellation_reason="cancellation_requested")

    # j_4242 renews a month after its trial ended.
    renew = period(sub_of(sim.objects(), user_row(st, "j_4242")["stripe_customer_id"]))[1]
    sim.advance(to=renew)
    nxt = period(sub_of(sim.objects(), user_row(st, "j_4242")["stripe_customer_id"]))[1]
    paid = int(st.psql_one("SELECT count(*) FROM billing_events WHERE user_id = 'j_4242' "
                           "AND event_type = 'invoice.paid'"))
    t.ok(nxt > renew and paid == 3, "j_4242 renewed: invoice.paid (trial, first, renewal)",
         (renew, nxt, paid))
    expect(t, st, "j_4242", "renewal -> active, next period", "active", "pro",
           current_period_end=nxt)
    expect(t, st, "j_3155", "yearly -> still active", "active", "basic")
    b.get(sim.base + "/")
    j.shot("dashboard-end")
    ev = sim.objects()["events"][-1]["id"]
    b.get(sim.base + "/events/" + ev)
    j.shot("event")
    t.ok("200" in b.text("table"), "the event page lists its delivery (200)")


def main():
    t = Tap()
    with t.guard("journey"), Stack(settings=SIM_SETTINGS, simulator=True) as st:
        sim = Sim(st)
        sim.deliver_to_stack()
        t.diag("screenshots: " + SHOTS)
        with Browser(SHOTS) as b:
            run(t, st, sim, b)
    return t.done()


if __name__ == "__main__":
    sys.exit(main())
