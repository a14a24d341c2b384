/*
 * The operator console: the analytics API and the HTML pages, one program.
 *
 *   GET  /api/admin/analytics?from=YYYY-MM&to=YYYY-MM&currency=usd
 *        analytics_report() as JSON; with Accept: text/csv (or format=csv)
 *        the monthly series as CSV.  Operators or a bearer JWT whose sub is
 *        in ADMIN_USERS.
 *   GET  /admin/                         dashboard (?from, to, currency)
 *   GET  /admin/search?q=TERM            customer search
 *   GET  /admin/customer?user=ID         one customer
 *   GET  /admin/confirm?action=A&user=ID[&target=T]   confirmation form
 *   POST /admin/action                   action, user, target, token, reason
 *
 * Apache maps the URLs to this program with the page in PATH_INFO ("/",
 * "/search", ...; "/api/analytics" for the API) and authenticates
 * operators itself (REMOTE_USER); ADMIN_USERS says who may enter.  A form
 * post must come from this site (Origin, else Referer) and carry the
 * token of its confirmation page (auth.h), and gives a reason; each action
 * is written to admin_audit (admin.h).  Errors of the API are JSON, those
 * of the pages are pages.
 */
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "admin.h"
#include "auth.h"
#include "buf.h"
#include "console.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "request.h"
#include "response.h"
#include "serve.h"

enum route {
	ROUTE_BARE,		/* /admin without its slash */
	ROUTE_DASHBOARD,
	ROUTE_SEARCH,
	ROUTE_CUSTOMER,
	ROUTE_CONFIRM,
	ROUTE_ACTION,
	ROUTE_API,
	ROUTE__MAX
};

static const struct {
	const char *path_info;
	const char *methods;
} routes[ROUTE__MAX] = {
	[ROUTE_BARE] = { "", "GET, HEAD" },
	[ROUTE_DASHBOARD] = { "/", "GET, HEAD" },
	[ROUTE_SEARCH] = { "/search", "GET, HEAD" },
	[ROUTE_CUSTOMER] = { "/customer", "GET, HEAD" },
	[ROUTE_CONFIRM] = { "/confirm", "GET, HEAD" },
	[ROUTE_ACTION] = { "/action", "POST" },
	[ROUTE_API] = { "/api/analytics", "GET, HEAD" },
};

static int
route_of(const char *path_info)
{
	int i;

	for (i = 0; i < ROUTE__MAX; i++)
		if (strcmp(path_info ? path_info : "", routes[i].path_info) == 0)
			return i;
	return -1;
}

/* A parameter of the query (GET) or of the form (POST): 1 and *v, 0 absent, -1 malformed. */
static int
param(const struct request *req, const char *name, char **v)
{
	return strcmp(req->method, "POST") == 0 ? request_form_param(req, name, v)
						: request_query_param(req, name, v);
}

/* What an action form names: the action, the user and the target. */
static enum outcome
read_action(const struct request *req, enum admin_action *a, char **user, char **target,
    const char **why)
{
	char *name = NULL;
	enum outcome rc = OUT_BAD_REQUEST;

	*why = "The action, user or target is missing or malformed.";
	if (param(req, "action", &name) != 1 || admin_action_parse(name, a) != 0 ||
	    param(req, "user", user) != 1 || !auth_user_id_valid(*user) ||
	    param(req, "target", target) < 0 || !admin_target_valid(*a, *target))
		goto out;
	rc = OUT_OK;
out:
	free(name);
	return rc;
}

/* POST /admin/action: origin, token, reason, then the action. */
static void
act(struct serve *srv, struct request *req, const char *operator)
{
	enum admin_action a = ADMIN_RESYNC;
	char *user = NULL, *target = NULL, *token = NULL, *reason = NULL, *binding = NULL;
	char *nonce = NULL;
	struct admin_done done = {0};
	const char *why = NULL;
	struct db *db = NULL;
	enum outcome rc;

	if ((rc = admin_same_origin()) != OUT_OK) {
		why = "This form was not sent from the console's own pages.";
		goto out;
	}
	if ((rc = request_body(req)) != OUT_OK ||
	    (rc = read_action(req, &a, &user, &target, &why)) != OUT_OK)
		goto out;
	binding = admin_form_binding(a, user, target);
	if (param(req, "token", &token) != 1 ||
	    (rc = auth_form_check(token, operator, binding, time(NULL), &nonce)) != OUT_OK) {
		rc = rc == OUT_MISCONFIGURED ? rc : OUT_FORBIDDEN;
		why = "This form has expired or was not made for you: open the confirmation again.";
		goto out;
	}
	if (param(req, "reason", &reason) != 1 || !admin_reason_valid(reason)) {
		rc = OUT_BAD_REQUEST;
		why = "Say why (a reason of at most 500 characters is required).";
		goto out;
	}
	if ((rc = serve_db(srv, &db)) != OUT_OK)
		goto out;
	rc = admin_perform(db, operator, a, user, target, reason, nonce, &done);
	log_note("action", admin_action_info(a)->name);
	if (done.audit_id > 0 || rc == OUT_OK)
		rc = console_result(operator, a, user, rc, &done);
out:
	if (!response_sent())
		console_error(operator, rc, done.summary ? done.summary : why);
	admin_done_free(&done);
	free(user);
	free(target);
	free(token);
	free(reason);
	free(binding);
	free(nonce);
}

/* The search term: trimmed, clean, at most LIMIT_ADMIN_SEARCH_TERM bytes; "" when absent. */
static enum outcome
read_term(const struct request *req, char **term)
{
	char *t = NULL, *s, *e;

	*term = NULL;
	if (request_query_param(req, "q", &t) < 0)
		return OUT_BAD_REQUEST;
	if (t == NULL)
		return OUT_OK;
	for (s = t; *s == ' ' || *s == '\t'; s++)
		;
	for (e = s + strlen(s); e > s && (e[-1] == ' ' || e[-1] == '\t'); e--)
		;
	*e = '\0';
	if (strlen(s) > LIMIT_ADMIN_SEARCH_TERM || !jsonget_clean_utf8(s, strlen(s))) {
		free(t);
		return OUT_BAD_REQUEST;
	}
	memmove(t, s, strlen(s) + 1);
	*term = t;
	return OUT_OK;
}

/* GET pages. */
static void
page(struct serve *srv, struct request *req, enum route r, const char *operator)
{
	struct admin_period period;
	enum admin_action a = ADMIN_RESYNC;
	char *v = NULL, *target = NULL;
	const char *field = NULL, *why = NULL;
	struct db *db = NULL;
	enum outcome rc = OUT_OK;

	switch (r) {
	case ROUTE_DASHBOARD:
		if ((rc = admin_period_parse(req, &period, &field, &why)) == OUT_OK &&
		    (rc = serve_db(srv, &db)) == OUT_OK)
			rc = console_dashboard(db, operator, &period);
		break;
	case ROUTE_SEARCH:
		if ((rc = read_term(req, &v)) == OUT_OK && (rc = serve_db(srv, &db)) == OUT_OK)
			rc = console_search(db, operator, v);
		why = rc == OUT_BAD_REQUEST ? "The search term is malformed or too long." : NULL;
		break;
	case ROUTE_CUSTOMER:
		if (request_query_param(req, "user", &v) != 1 || !auth_user_id_valid(v))
			rc = OUT_BAD_REQUEST;
		else if ((rc = serve_db(srv, &db)) == OUT_OK)
			rc = console_customer(db, operator, v);
		why = rc == OUT_NOT_FOUND ? "Nothing is known of this user id." :
		    rc == OUT_BAD_REQUEST ? "The user id is missing or malformed." : NULL;
		break;
	case ROUTE_CONFIRM:
		if ((rc = read_action(req, &a, &v, &target, &why)) == OUT_OK &&
		    (rc = serve_db(srv, &db)) == OUT_OK)
			rc = console_confirm(db, operator, a, v, target);
		if (rc == OUT_NOT_FOUND)
			why = "Not found: the subscription, usage type or Stripe customer is not"
			    " this user's.";
		break;
	default:
		rc = OUT_NOT_FOUND;
		break;
	}
	if (!response_sent()) {
		struct buf msg = BUF_INIT(256);

		if (field != NULL && buf_printf(&msg, "%s %s.", field, why) == 0)
			why = buf_str(&msg);
		console_error(operator, rc, why);
		buf_free(&msg);
	}
	free(v);
	free(target);
}

static void
api(struct serve *srv, struct request *req)
{
	struct admin_period period;
	const char *field = NULL, *why = NULL;
	struct db *db = NULL;
	struct buf msg = BUF_INIT(256);
	enum outcome rc;

	if ((rc = admin_period_parse(req, &period, &field, &why)) == OUT_OK &&
	    (rc = serve_db(srv, &db)) == OUT_OK)
		rc = admin_analytics_answer(db, &period, admin_wants_csv(req));
	if (response_sent())
		;
	else if (rc == OUT_INVALID_FIELD && buf_printf(&msg, "%s %s.", field, why) == 0)
		response_error_field(rc, field, buf_str(&msg));
	else
		response_error(rc, NULL);
	buf_free(&msg);
}

static void
admin(struct serve *srv, struct request *req)
{
	int r = route_of(request_env("PATH_INFO"));
	struct auth_caller caller;	/* borrows operator */
	char *operator = NULL;
	enum outcome rc;

	/* Who first: nothing, not even which URLs exist, before that. */
	if ((rc = admin_operator(r == ROUTE_API, &operator)) != OUT_OK) {
		if (r == ROUTE_API)
			response_error(rc, NULL);
		else
			console_error(NULL, rc, NULL);
		return;
	}
	log_note("operator", operator);
	/* An operator is a caller like any other for the rate limit (by name). */
	caller.kind = AUTH_REMOTE_USER;
	caller.user_id = operator;
	if ((rc = serve_limit_caller(srv, &caller)) != OUT_OK) {
		if (r == ROUTE_API)
			response_error(rc, NULL);
		else
			console_error(operator, rc, NULL);
	} else if (r >= 0 && (rc = request_check_method(req, routes[r].methods)) != OUT_OK) {
		if (r == ROUTE_API)
			response_error(rc, NULL);
		else
			console_error(operator, rc, NULL);
	} else if (r == ROUTE_BARE)
		console_redirect_to_slash();
	else if (r == ROUTE_API)
		api(srv, req);
	else if (r == ROUTE_ACTION)
		act(srv, req, operator);
	else
		page(srv, req, r < 0 ? ROUTE__MAX : (enum route)r, operator);
	free(operator);
}

static const struct serve_endpoint endpoint = {
	.name = "admin",
	.methods = "GET, POST",
	.cors = 0,
	.rate_limit = { "ADMIN", "300/60s", "600/60s" },
	.handle = admin,
};

int
main(void)
{
	return serve_main(&endpoint);
}
