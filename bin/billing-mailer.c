/*
 * billing-mailer: sends the lifecycle notifications webhook.cgi queued
 * in the notifications outbox, over SMTP.  Meant for cron, e.g. every
 * minute; each run:
 *
 *   reads the settings and loads every template (any problem: exit 2,
 *   nothing touched) -> connects to the database -> claims the due rows
 *   one by one (outbox.h: FOR UPDATE SKIP LOCKED, so overlapping runs
 *   never take the same row) -> renders (compose.h) -> sends (smtp.h) ->
 *   records the result in the row's own transaction -> stops after
 *   MAIL_BATCH rows or MAIL_MAX_SECONDS, or at the first failure that is
 *   the server's and not the message's.
 *
 * Exit status (what cron or a timer acts on): 0 every row handled was
 * sent (or none was due); 1 at least one was not: retried later, failed
 * for good, or its user has no email address; 2 could not run or finish
 * (settings, templates, database).
 *
 * --dry-run renders the due mails to stdout (mbox format) and changes
 * nothing; SMTP settings are not needed for it.
 */
#include <getopt.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "compose.h"
#include "config.h"
#include "db.h"
#include "limits.h"
#include "log.h"
#include "outbox.h"
#include "smtp.h"

#ifndef BILLING_MAIL_DIR
#define BILLING_MAIL_DIR "/usr/local/share/billing-cgi/mail"
#endif

enum { EXIT_ALL_SENT = 0, EXIT_NOT_ALL_SENT = 1, EXIT_CANNOT_RUN = 2 };

/* What one row came to, for the counters and the loop. */
enum step { STEP_SENT, STEP_RETRY, STEP_FAILED, STEP_NO_EMAIL, STEP__MAX };

struct run {
	int dry_run;
	long batch, max_seconds;
	struct outbox_policy policy;
	struct compose *compose;
	struct smtp *smtp;
	struct db *db;
	int counts[STEP__MAX];
	int stop;		/* the server, not a message, failed: no more rows this run */
	int db_failed;
	int progress;		/* stderr is a terminal: one line per row */
};

static const char *const step_names[STEP__MAX] = { "sent", "retry", "failed", "no_email" };

static void
usage(FILE *f)
{
	fprintf(f, "usage: billing-mailer [--dry-run]\n"
	    "Sends the due notifications of the outbox over SMTP (settings: see README).\n"
	    "  --dry-run  print the due mails to stdout (mbox) instead; change nothing\n"
	    "Exit status: 0 all sent, 1 some not sent, 2 could not run.\n");
}

static int
parse_options(int argc, char **argv, struct run *run)
{
	static const struct option opts[] = {
		{ "dry-run", no_argument, NULL, 'n' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	int c;

	while ((c = getopt_long(argc, argv, "nh", opts, NULL)) != -1) {
		if (c == 'n')
			run->dry_run = 1;
		else if (c == 'h') {
			usage(stdout);
			exit(EXIT_ALL_SENT);
		} else {
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc) {
		usage(stderr);
		return -1;
	}
	return 0;
}

static enum outcome
read_settings(struct run *run)
{
	long attempts;
	enum outcome rc;

	if ((rc = config_get_long("MAIL_BATCH", 100, 1, 100000, &run->batch)) != OUT_OK ||
	    (rc = config_get_long("MAIL_MAX_SECONDS", 50, 1, 86400, &run->max_seconds)) != OUT_OK ||
	    (rc = config_get_long("MAIL_MAX_ATTEMPTS", 10, 1, 1000, &attempts)) != OUT_OK ||
	    (rc = config_get_long("MAIL_RETRY_SECONDS", 60, 1, 86400, &run->policy.base_s)) !=
	    OUT_OK ||
	    (rc = config_get_long("MAIL_RETRY_MAX_SECONDS", 21600, 1, 30 * 86400,
	    &run->policy.max_s)) != OUT_OK)
		return rc;
	run->policy.max_attempts = (int)attempts;
	return OUT_OK;
}

/* A number in [0, 1) for the jitter; not a secret, so any source will do. */
static double
jitter(void)
{
	unsigned int v;

	if (getrandom(&v, sizeof(v), GRND_NONBLOCK) != (ssize_t)sizeof(v))
		v = (unsigned int)time(NULL) ^ (unsigned int)getpid() ^ (unsigned int)clock();
	return (double)v / 4294967296.0;
}

static enum step
record(struct run *run, const struct outbox_row *row, enum step step,
    const struct outbox_result *res)
{
	if (outbox_record(run->db, row, res) == -1) {
		if (step == STEP_SENT)
			log_msg("notification %s was sent but the database did not record it:"
			    " it will be sent again", row->id);
		run->db_failed = 1;
	}
	return step;
}

/* A temporary failure: retried after a backoff, or failed for good after the last attempt. */
static enum step
retry_or_give_up(struct run *run, const struct outbox_row *row, const char *reason,
    const char *message_id)
{
	struct outbox_result res = { OUTBOX_RETRY, 0, reason, message_id, row->email };
	char why[LIMIT_MAIL_REASON];

	res.retry_seconds = outbox_backoff(&run->policy, row->attempts + 1, jitter());
	if (res.retry_seconds < 0) {
		snprintf(why, sizeof(why), "gave up after %d attempts; last: %.200s", row->attempts + 1,
		    reason);
		res.state = OUTBOX_FAILED;
		res.reason = why;
		return record(run, row, STEP_FAILED, &res);
	}
	return record(run, row, STEP_RETRY, &res);
}

/* Renders, sends and records one claimed row. */
static enum step
deliver(struct run *run, const struct outbox_row *row)
{
	struct compose_input in = { row->id, row->kind, row->payload, row->email, row->created_us,
		time(NULL) };
	struct outbox_result res = { OUTBOX_FAILED, 0, NULL, NULL, row->email };
	struct buf msg = BUF_INIT(LIMIT_MAIL_MESSAGE);
	struct smtp_result sent;
	char *message_id = NULL, reason[LIMIT_MAIL_REASON];
	enum step step;

	if (row->email == NULL) {
		res.state = OUTBOX_NO_EMAIL;
		res.reason = "no email address for the user (customers.email)";
		log_msg("notification %s %s: no email address, not sent", row->id, row->kind);
		return record(run, row, STEP_NO_EMAIL, &res);
	}
	if (compose_message(run->compose, &in, &msg, &message_id, reason, sizeof(reason)) == -1) {
		log_msg("notification %s %s: failed: %s", row->id, row->kind, reason);
		res.reason = reason;
		step = record(run, row, STEP_FAILED, &res);
		goto out;
	}
	smtp_send(run->smtp, compose_sender(run->compose), row->email, buf_str(&msg), msg.len,
	    &sent);
	res.message_id = message_id;
	if (sent.status == SMTP_SENT) {
		res.state = OUTBOX_SENT;
		step = record(run, row, STEP_SENT, &res);
	} else if (sent.status == SMTP_PERMANENT) {
		log_msg("notification %s %s: failed: %s", row->id, row->kind, sent.brief);
		res.reason = sent.reason;
		step = record(run, row, STEP_FAILED, &res);
	} else {
		log_msg("notification %s %s: not sent (%s)%s", row->id, row->kind, sent.brief,
		    sent.fatal ? "; stopping this run" : "");
		step = retry_or_give_up(run, row, sent.reason, message_id);
	}
	run->stop = sent.fatal;
out:
	free(message_id);
	buf_free(&msg);
	return step;
}

/* --dry-run: the mail as it would go out, in mbox format (RFC 4155); nothing recorded. */
static enum step
show(struct run *run, const struct outbox_row *row)
{
	struct compose_input in = { row->id, row->kind, row->payload, row->email, row->created_us,
		time(NULL) };
	struct buf msg = BUF_INIT(LIMIT_MAIL_MESSAGE);
	char *message_id = NULL, reason[LIMIT_MAIL_REASON];
	const char *p;
	enum step step = STEP_SENT;

	if (row->email == NULL) {
		log_msg("notification %s %s: no email address (would not be sent)", row->id,
		    row->kind);
		step = STEP_NO_EMAIL;
	} else if (compose_message(run->compose, &in, &msg, &message_id, reason,
	    sizeof(reason)) == -1) {
		log_msg("notification %s %s: would fail: %s", row->id, row->kind, reason);
		step = STEP_FAILED;
	} else {
		printf("From billing-mailer %s", ctime(&in.now));
		/* mbox lines end in LF; QP bodies never start a line with "From ". */
		for (p = buf_str(&msg); *p; p++)
			if (!(p[0] == '\r' && p[1] == '\n'))
				putchar(*p);
		putchar('\n');
	}
	outbox_release(run->db);
	free(message_id);
	buf_free(&msg);
	return step;
}

static int
send_due(struct run *run)
{
	struct outbox_row row;
	char after[32] = "0";
	enum step step;
	long handled = 0, hold_ms = 0;
	int got;

	/* The row's transaction waits for the send: rendering, then at most SMTP_TIMEOUT. */
	if (!run->dry_run)
		hold_ms = smtp_timeout_ms(run->smtp) + LIMIT_MAIL_HOLD_MARGIN_MS;

	while (handled < run->batch && log_elapsed_ms() < run->max_seconds * 1000 && !run->stop &&
	    !run->db_failed) {
		if ((got = outbox_claim(run->db, after, hold_ms, &row)) <= 0) {
			run->db_failed = got < 0;
			break;
		}
		snprintf(after, sizeof(after), "%s", row.id);
		step = run->dry_run ? show(run, &row) : deliver(run, &row);
		run->counts[step]++;
		handled++;
		if (run->progress)
			fprintf(stderr, "billing-mailer: notification %s %s: %s\n", row.id, row.kind,
			    step_names[step]);
		outbox_row_free(&row);
	}
	if (run->db_failed)
		return EXIT_CANNOT_RUN;
	return run->counts[STEP_RETRY] + run->counts[STEP_FAILED] + run->counts[STEP_NO_EMAIL] ?
	    EXIT_NOT_ALL_SENT : EXIT_ALL_SENT;
}

int
main(int argc, char **argv)
{
	struct run run;
	int status = EXIT_CANNOT_RUN;
	long due = -1;

	memset(&run, 0, sizeof(run));
	log_begin("mailer");
	run.progress = isatty(STDERR_FILENO);
	if (parse_options(argc, argv, &run) == -1)
		return EXIT_CANNOT_RUN;
	if (config_load() != OUT_OK || read_settings(&run) != OUT_OK ||
	    compose_load(BILLING_MAIL_DIR, &run.compose) != OUT_OK ||
	    (!run.dry_run && smtp_open(&run.smtp) != OUT_OK) || db_connect(&run.db) != OUT_OK)
		goto out;
	status = send_due(&run);
	if (!run.db_failed)
		due = outbox_due(run.db);
	log_msg("%s%s=%d %s=%d %s=%d %s=%d due=%ld ms=%ld exit=%d",
	    run.dry_run ? "dry-run " : "", run.dry_run ? "rendered" : step_names[STEP_SENT],
	    run.counts[STEP_SENT], step_names[STEP_RETRY], run.counts[STEP_RETRY],
	    step_names[STEP_FAILED], run.counts[STEP_FAILED], step_names[STEP_NO_EMAIL],
	    run.counts[STEP_NO_EMAIL], due, log_elapsed_ms(), status);
out:
	if (status == EXIT_CANNOT_RUN && run.db == NULL)
		log_msg("could not run: see the lines above; nothing was sent or changed");
	smtp_close(run.smtp);
	compose_free(run.compose);
	db_close(run.db);
	return status;
}
