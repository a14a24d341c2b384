/*
 * The operator console's pages, server-rendered by admin.cgi: HTML built
 * with the html module (every value escaped), charts from the chart module,
 * no script and no external resource, so they work with JavaScript off and
 * under a strict Content-Security-Policy (default-src 'none'; the one
 * inline style sheet allowed by its hash; form-action 'self';
 * frame-ancestors 'none').
 *
 * Pages live at /admin/<page> and link to each other relatively
 * ("customer?user=..."), so the console works under any prefix that ends
 * in /admin/.  Each function answers the request (response_body) and
 * returns OUT_OK, or returns another outcome without answering; the caller
 * then answers with console_error.
 */
#ifndef CONSOLE_H
#define CONSOLE_H

#include "admin.h"
#include "db.h"
#include "outcome.h"

/*
 * The dashboard: headline figures (MRR, ARR, paying customers, ARPA,
 * subscriptions by status) and charts of p's months in p's currency: MRR
 * with its movements, subscriptions by tier and status, churn and
 * conversion, quota utilisation this month; the monthly figures as a table.
 */
enum outcome console_dashboard(struct db *db, const char *operator, const struct admin_period *p)
    __attribute__((warn_unused_result));

/*
 * Customer search: users whose user id or Stripe customer id is term, who
 * own subscription term, whose user id or e-mail address starts with term
 * (e-mail: any case); and subscriptions not linked to a user whose
 * subscription or customer id is term.  term NULL or empty: the form only.
 */
enum outcome console_search(struct db *db, const char *operator, const char *term)
    __attribute__((warn_unused_result));

/*
 * A customer: the customer row, subscriptions (with the actions that apply),
 * usage this month (with reset) and in past months, MRR movements, billing
 * events (with their Stripe metadata), notifications and their delivery
 * state, and the console actions taken on this user.  OUT_NOT_FOUND when
 * the database knows nothing of user_id.
 */
enum outcome console_customer(struct db *db, const char *operator, const char *user_id)
    __attribute__((warn_unused_result));

/*
 * The confirmation of an action: what it does, the current state, and the
 * form that performs it (token bound to operator, action, user and target;
 * a reason is required).
 */
enum outcome console_confirm(struct db *db, const char *operator, enum admin_action a,
    const char *user_id, const char *target) __attribute__((warn_unused_result));

/* What an action did (rc OUT_OK) or why it did not, with a link back to the customer. */
enum outcome console_result(const char *operator, enum admin_action a, const char *user_id,
    enum outcome rc, const struct admin_done *done) __attribute__((warn_unused_result));

/*
 * An error page with rc's status: message (plain text, escaped) or rc's
 * own message.  operator may be NULL (not signed in).  Always answers.
 */
void console_error(const char *operator, enum outcome rc, const char *message);

/* A 301 to "admin/" for the console's URL without its slash (relative links need it). */
void console_redirect_to_slash(void);

#endif
