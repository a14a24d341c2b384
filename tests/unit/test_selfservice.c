#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <json-c/json.h>

#include "config.h"
#include "selfservice.h"
#include "tap.h"

static enum outcome
parse(const char *text, struct selfservice_request *req, const char **field)
{
	struct json_object *body = json_tokener_parse(text);
	const char *why = NULL;
	enum outcome o;

	*field = NULL;
	o = selfservice_parse(body, req, field, &why);
	json_object_put(body); /* req's strings are not looked at after this */
	return o;
}

static struct selfservice_sub
sub(const char *status, const char *tier, const char *interval, int cape)
{
	struct selfservice_sub s;

	memset(&s, 0, sizeof(s));
	s.exists = 1;
	snprintf(s.id, sizeof(s.id), "sub_1");
	snprintf(s.status, sizeof(s.status), "%s", status);
	snprintf(s.tier, sizeof(s.tier), "%s", tier);
	snprintf(s.interval, sizeof(s.interval), "%s", interval);
	s.cancel_at_period_end = cape;
	return s;
}

static struct selfservice_request
ask(enum selfservice_action action, enum plan_tier tier, enum plan_interval interval,
    int at_period_end)
{
	struct selfservice_request r;

	memset(&r, 0, sizeof(r));
	r.user_id = "u1";
	r.action = action;
	r.tier = tier;
	r.interval = interval;
	r.at_period_end = at_period_end;
	return r;
}

#define CHANGE (1u << SS_CHANGE)
#define CANCEL (1u << SS_CANCEL)
#define RESUME (1u << SS_RESUME)

int
main(void)
{
	struct selfservice_request req;
	struct selfservice_sub none, s;
	const char *field;
	long long now = 1800000000;

	unsetenv("BILLING_CONFIG");
	unsetenv("STRIPE_PRORATION_BEHAVIOR");
	unsetenv("STRIPE_PRORATION_CHOICES");
	ok(config_load() == OUT_OK, "config loads");

	/* Parsing: the field table, then what the action needs. */
	ok(parse("{\"userId\":\"u1\",\"action\":\"cancel\"}", &req, &field) == OUT_OK &&
	       req.action == SS_CANCEL && req.at_period_end == 1,
	   "cancel: atPeriodEnd defaults true");
	ok(parse("{\"userId\":\"u1\",\"action\":\"cancel\",\"atPeriodEnd\":false}", &req, &field) ==
		   OUT_OK &&
	       req.at_period_end == 0,
	   "cancel now");
	ok(parse("{\"userId\":\"u1\",\"action\":\"change\",\"tier\":\"basic\",\"interval\":"
		 "\"yearly\","
		 "\"prorationDate\":1799999000}",
		 &req, &field) == OUT_OK &&
	       req.action == SS_CHANGE && req.tier == TIER_BASIC &&
	       req.interval == INTERVAL_YEARLY && req.proration_date == 1799999000,
	   "change with a prorationDate");
	ok(parse("{\"userId\":\"u1\",\"action\":\"resume\",\"tier\":\"gold\"}", &req, &field) ==
		   OUT_INVALID_FIELD &&
	       strcmp(field, "tier") == 0,
	   "members are checked for every action");
	ok(parse("{\"userId\":\"u1\",\"action\":\"preview\",\"tier\":\"pro\"}", &req, &field) ==
		   OUT_INVALID_FIELD &&
	       strcmp(field, "interval") == 0,
	   "preview needs interval");
	ok(parse("{\"userId\":\"u1\",\"action\":\"change\",\"interval\":\"monthly\"}", &req,
		 &field) == OUT_INVALID_FIELD &&
	       strcmp(field, "tier") == 0,
	   "change needs tier");
	ok(parse(
	       "{\"userId\":\"u1\",\"action\":\"change\",\"tier\":\"pro\",\"interval\":\"monthly\","
	       "\"proration\":\"none\"}",
	       &req, &field) == OUT_INVALID_FIELD &&
	       strcmp(field, "proration") == 0,
	   "proration none is not allowed by default");
	ok(parse("{\"userId\":\"u1\",\"action\":\"swap\"}", &req, &field) == OUT_INVALID_FIELD &&
	       strcmp(field, "action") == 0,
	   "unknown action");
	ok(parse("{\"userId\":\"u1\",\"action\":\"cancel\",\"prorationDate\":1.5}", &req, &field) ==
		   OUT_INVALID_FIELD &&
	       strcmp(field, "prorationDate") == 0,
	   "prorationDate is an integer");

	/* What a user may do next. */
	memset(&none, 0, sizeof(none));
	s = sub("active", "pro", "monthly", 0);
	ok(selfservice_actions(&s) == (CHANGE | CANCEL), "active: change, cancel");
	s = sub("trialing", "pro", "monthly", 1);
	ok(selfservice_actions(&s) == (CANCEL | RESUME), "scheduled to cancel: cancel now, resume");
	s = sub("past_due", "basic", "yearly", 0);
	ok(selfservice_actions(&s) == (CHANGE | CANCEL), "past_due is live");
	s = sub("canceled", "pro", "monthly", 0);
	ok(selfservice_actions(&s) == 0 && selfservice_actions(&none) == 0,
	   "canceled, none: nothing");
	s = sub("unpaid", "pro", "monthly", 0);
	ok(selfservice_actions(&s) == 0, "unpaid is not live (the portal handles it)");

	/* Refusals. */
	req = ask(SS_CHANGE, TIER_PRO, INTERVAL_MONTHLY, 1);
	ok(selfservice_refusal(&req, &none) == OUT_NO_SUBSCRIPTION, "nothing: no_subscription");
	s = sub("active", "pro", "monthly", 0);
	ok(selfservice_refusal(&req, &s) == OUT_NO_CHANGE, "same plan: no_change");
	req.interval = INTERVAL_YEARLY;
	ok(selfservice_refusal(&req, &s) == OUT_OK, "another interval: fine");
	req.action = SS_PREVIEW;
	ok(selfservice_refusal(&req, &s) == OUT_OK, "preview follows change");
	s.cancel_at_period_end = 1;
	ok(selfservice_refusal(&req, &s) == OUT_CANCEL_PENDING,
	   "scheduled to cancel: cancel_pending");
	req = ask(SS_CANCEL, TIER_FREE, INTERVAL_MONTHLY, 1);
	ok(selfservice_refusal(&req, &s) == OUT_NO_CHANGE, "cancel at period end twice: no_change");
	req.at_period_end = 0;
	ok(selfservice_refusal(&req, &s) == OUT_OK, "cancel now while scheduled: fine");
	req = ask(SS_RESUME, TIER_FREE, INTERVAL_MONTHLY, 1);
	ok(selfservice_refusal(&req, &s) == OUT_OK, "resume a scheduled cancel");
	s.cancel_at_period_end = 0;
	ok(selfservice_refusal(&req, &s) == OUT_NOT_RESUMABLE, "resume without one: not_resumable");
	s = sub("canceled", "pro", "monthly", 0);
	ok(selfservice_refusal(&req, &s) == OUT_NOT_RESUMABLE,
	   "resume a canceled one: not_resumable");
	s = sub("incomplete_expired", "pro", "monthly", 0);
	ok(selfservice_refusal(&req, &s) == OUT_NOT_RESUMABLE, "incomplete_expired is final too");
	ok(selfservice_refusal(&req, &none) == OUT_NO_SUBSCRIPTION, "resume nothing: 404");
	req = ask(SS_CANCEL, TIER_FREE, INTERVAL_MONTHLY, 0);
	s = sub("canceled", "pro", "monthly", 0);
	ok(selfservice_refusal(&req, &s) == OUT_NO_SUBSCRIPTION, "cancel a canceled one: 404");
	s = sub("incomplete", "pro", "monthly", 0);
	ok(selfservice_refusal(&req, &s) == OUT_NO_SUBSCRIPTION, "incomplete is not live");

	/* prorationDate from a preview. */
	ok(selfservice_proration_date_problem(now - 60, now, now - 86400) == NULL, "a minute old");
	ok(selfservice_proration_date_problem(now - LIMIT_PRORATION_PREVIEW_MAX_AGE_S, now, 0) == NULL,
	   "exactly the maximum age");
	ok(selfservice_proration_date_problem(now - LIMIT_PRORATION_PREVIEW_MAX_AGE_S - 1, now, 0) !=
	       NULL,
	   "older than a preview lives");
	ok(selfservice_proration_date_problem(now + LIMIT_PRORATION_CLOCK_SKEW_S, now, 0) == NULL,
	   "a little ahead (another server's clock)");
	ok(selfservice_proration_date_problem(now + LIMIT_PRORATION_CLOCK_SKEW_S + 1, now, 0) != NULL,
	   "in the future");
	ok(selfservice_proration_date_problem(now - 60, now, now - 30) != NULL,
	   "before the current period (it renewed since the preview)");
	return done_testing();
}
