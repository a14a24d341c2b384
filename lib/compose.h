/*
 * The mail of one notification: each kind's templates, loaded and
 * checked once when billing-mailer starts, the values a row's payload
 * and the settings give their placeholders, and the finished message
 * (mail.c).
 *
 * Templates are two files per kind in one directory: <kind>.txt, whose
 * first line is "Subject: ..." and whose second line is empty, and
 * <kind>.html.  The directory is MAIL_TEMPLATE_DIR, else the one
 * installed under $(datadir)/billing-cgi/mail.  Placeholders:
 *
 *   every kind      app_name (MAIL_APP_NAME; default MAIL_FROM's display
 *                   name, else its domain), email (the recipient),
 *                   account_url (MAIL_ACCOUNT_URL), plan ("Pro")
 *   trial_will_end  interval ("month"), amount ("15.00 USD"), trial_end
 *                   ("27 November 2026", UTC)
 *   payment_failed, payment_action_required
 *                   interval, amount (what is due), invoice_url (Stripe's
 *                   hosted invoice page), invoice_number
 *   subscription_canceled  ended_at
 *   welcome         interval
 *
 * Any other name, a missing file, a missing Subject line, or a template
 * using account_url while MAIL_ACCOUNT_URL is unset is an error at
 * start-up.  A row whose payload lacks a value its templates use fails
 * with that reason instead of being sent with a blank.
 */
#ifndef COMPOSE_H
#define COMPOSE_H

#include <stddef.h>
#include <time.h>

#include "buf.h"
#include "outcome.h"

struct compose;

/*
 * Reads MAIL_FROM (required), MAIL_REPLY_TO, MAIL_APP_NAME,
 * MAIL_ACCOUNT_URL and MAIL_TEMPLATE_DIR (default_dir when unset) and
 * loads every kind's templates.  OUT_OK and *c, or OUT_MISCONFIGURED
 * after logging every problem found (file, line, placeholder, setting).
 */
enum outcome compose_load(const char *default_dir, struct compose **c)
    __attribute__((warn_unused_result));

/* The envelope sender: MAIL_FROM's address. */
const char *compose_sender(const struct compose *c);

/* The notification to write. */
struct compose_input {
	const char *id;		/* notifications.id */
	const char *kind;
	const char *payload;	/* JSON object text */
	const char *to;		/* the recipient's address */
	long long created_us;	/* created_at, for the Message-ID */
	time_t now;		/* the Date header */
};

/*
 * Appends the message to msg and sets *message_id (malloc'ed).  0, or -1
 * with *message_id NULL and reason set (an unknown kind, a value the
 * templates need and the payload lacks, an address we cannot write, a
 * message over LIMIT_MAIL_MESSAGE): that row cannot be sent as it is.
 */
int compose_message(const struct compose *c, const struct compose_input *in, struct buf *msg,
    char **message_id, char *reason, size_t reason_len) __attribute__((warn_unused_result));

void compose_free(struct compose *c);

/* Exported for the unit tests. */

/*
 * minor units of currency as text: "15.00 USD", "1500 JPY", "1.500 KWD"
 * (Stripe's zero- and three-decimal currencies).  -1 when currency is
 * not three letters.
 */
int compose_amount(long long minor, const char *currency, char *out, size_t n);

/* "2026-11-27T09:00:00Z" as "27 November 2026"; -1 when not such a time. */
int compose_date(const char *iso, char *out, size_t n);

#endif
