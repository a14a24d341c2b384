/*
 * billing-sync: pulls the truth from the Stripe API for what webhooks
 * missed (an endpoint down longer than Stripe retries, a wrong secret, a
 * new install with existing customers, a fix in the dashboard).  For cron
 * and operators:
 *
 *   billing-sync subscriptions [--customer cus_...] [--since DATE]
 *   billing-sync events [--since 72h]
 *   billing-sync check [--json]
 *
 * Each run: reads the settings (SYNC_MAX_RPS paces every Stripe call) ->
 * connects to the database -> runs the command (lib/sync.c, lib/drift.c),
 * which continues a run that was killed from its cursor -> one summary
 * line on stderr, progress lines too when stderr is a terminal.
 *
 * Exit status: 0 done (check: no drift); 1 done, but something needs an
 * operator: customers linked to no user, rows Stripe does not have
 * (check: drift); 2 could not run or finish.
 */
#include <getopt.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "config.h"
#include "db.h"
#include "drift.h"
#include "log.h"
#include "stripe.h"
#include "sync.h"

enum command { CMD_SUBSCRIPTIONS, CMD_EVENTS, CMD_CHECK, CMD__MAX };

static const char *const command_names[CMD__MAX] = { "subscriptions", "events", "check" };

static void
usage(FILE *f)
{
	fprintf(f, "usage: billing-sync subscriptions [--customer cus_...] [--since DATE]\n"
	    "       billing-sync events [--since 72h]\n"
	    "       billing-sync check [--json]\n"
	    "DATE: YYYY-MM-DD, YYYY-MM-DDTHH:MM:SSZ (UTC) or a time ago: <n>m, <n>h, <n>d.\n"
	    "Exit status: 0 done (check: no drift), 1 needs an operator (check: drift),\n"
	    "2 could not run or finish.  Settings: see README.\n");
}

/* The command and its options; -1 (usage printed) when they make no sense. */
static int
parse_args(int argc, char **argv, enum command *cmd, struct sync_options *o)
{
	static const struct option opts[] = {
		{ "customer", required_argument, NULL, 'c' },
		{ "since", required_argument, NULL, 's' },
		{ "json", no_argument, NULL, 'j' },
		{ "help", no_argument, NULL, 'h' },
		{ NULL, 0, NULL, 0 },
	};
	const char *since = NULL;
	int c, i;

	if (argc < 2 || strcmp(argv[1], "--help") == 0 || strcmp(argv[1], "-h") == 0) {
		usage(argc < 2 ? stderr : stdout);
		return argc < 2 ? -1 : 1;
	}
	for (i = 0; i < CMD__MAX && strcmp(argv[1], command_names[i]) != 0; i++)
		;
	if (i == CMD__MAX) {
		fprintf(stderr, "billing-sync: unknown command %.64s\n", argv[1]);
		usage(stderr);
		return -1;
	}
	*cmd = (enum command)i;
	optind = 2;
	while ((c = getopt_long(argc, argv, "h", opts, NULL)) != -1) {
		if (c == 'c' && *cmd == CMD_SUBSCRIPTIONS && stripe_id_valid(optarg))
			o->customer = optarg;
		else if (c == 's' && *cmd != CMD_CHECK)
			since = optarg;
		else if (c == 'j' && *cmd == CMD_CHECK)
			o->json = 1;
		else {
			usage(stderr);
			return -1;
		}
	}
	if (optind != argc ||
	    (since && sync_parse_since(since, (long long)time(NULL), &o->since) != 0)) {
		usage(stderr);
		return -1;
	}
	return 0;
}

int
main(int argc, char **argv)
{
	struct sync_options o = { .since = -1 };
	struct db *db = NULL;
	enum command cmd = CMD_CHECK;
	int status = SYNC_EXIT_ERROR, args;

	log_begin("sync");
	o.progress = isatty(STDERR_FILENO);
	if ((args = parse_args(argc, argv, &cmd, &o)) != 0)
		return args > 0 ? SYNC_EXIT_OK : SYNC_EXIT_ERROR;
	if (config_load() != OUT_OK || sync_setup() != OUT_OK || db_connect(&db) != OUT_OK) {
		log_msg("%s: could not start (see the lines above); nothing was changed",
		    command_names[cmd]);
		goto out;
	}
	if (cmd == CMD_SUBSCRIPTIONS)
		status = sync_subscriptions(db, &o);
	else if (cmd == CMD_EVENTS)
		status = sync_events(db, &o);
	else
		status = drift_check(db, &o);
out:
	db_close(db);
	return status;
}
