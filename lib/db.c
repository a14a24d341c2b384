#include <poll.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include <libpq-fe.h>

#include "config.h"
#include "db.h"
#include "limits.h"
#include "log.h"
#include "mem.h"

struct db {
	PGconn *conn;
	char *url;	/* the DATABASE_URL it was made with (a secret: never logged) */
	/* set_config values for each transaction: milliseconds as text. */
	char statement_ms[16], lock_ms[16], idle_ms[16];
	int begin_pending; /* db_begin called; BEGIN goes out with the next statement */
};

/* The timeout settings, their defaults, and where db_connect puts them. */
static const struct {
	const char *setting;
	long def;
	size_t field;
} timeouts[] = {
	{ "DB_STATEMENT_TIMEOUT_MS", LIMIT_DB_STATEMENT_MS, offsetof(struct db, statement_ms) },
	{ "DB_LOCK_TIMEOUT_MS", LIMIT_DB_LOCK_MS, offsetof(struct db, lock_ms) },
	{ "DB_IDLE_IN_TRANSACTION_TIMEOUT_MS", LIMIT_DB_IDLE_IN_TRANSACTION_MS,
	  offsetof(struct db, idle_ms) },
};

struct db_rows {
	PGresult *res;
};

/* libpq prints notices to stderr by default; they may quote data, so drop them. */
static void
ignore_notice(void *arg, const char *message)
{
	(void)arg;
	(void)message;
}

enum outcome
db_connect(struct db **out)
{
	const char *url;
	char timeout[16];
	const char *keys[] = { "dbname", "connect_timeout", "application_name", NULL };
	const char *vals[4];
	PGconn *conn = NULL;
	struct db *db;
	enum outcome rc;
	long ms[sizeof(timeouts) / sizeof(timeouts[0])];
	size_t i;

	*out = NULL;
	if ((rc = config_require("DATABASE_URL", &url)) != OUT_OK)
		return rc;
	for (i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++)
		if ((rc = config_get_long(timeouts[i].setting, timeouts[i].def, 1,
		    LIMIT_DB_TIMEOUT_MAX_MS, &ms[i])) != OUT_OK)
			return rc;
	snprintf(timeout, sizeof(timeout), "%d", LIMIT_DB_CONNECT_S);
	vals[0] = url;
	vals[1] = timeout;
	vals[2] = "billing-cgi";
	vals[3] = NULL;
	/* expand_dbname: the URL's own settings win over ours where both exist. */
	conn = PQconnectdbParams(keys, vals, 1);
	if (conn == NULL) {
		log_msg("database connection could not be allocated");
		return OUT_UNAVAILABLE;
	}
	if (PQstatus(conn) != CONNECTION_OK) {
		log_msg("database connection failed");
		PQfinish(conn);
		return OUT_UNAVAILABLE;
	}
	PQsetNoticeProcessor(conn, ignore_notice, NULL);
	db = mem_calloc(1, sizeof(*db));
	db->conn = conn;
	db->url = mem_strdup(url);
	for (i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++)
		snprintf((char *)db + timeouts[i].field, sizeof(db->statement_ms), "%ld", ms[i]);
	*out = db;
	return OUT_OK;
}

void
db_close(struct db *db)
{
	if (db == NULL)
		return;
	PQfinish(db->conn);
	mem_free_secret(db->url, strlen(db->url));
	free(db);
}

/*
 * Whether an idle connection still works, without a round trip.  Nothing
 * may arrive on an idle connection of ours (we never LISTEN): a readable
 * socket means the server went away or is going (restart, failover,
 * pg_terminate_backend: a FATAL, then end of file, which one read does
 * not always reach).  Either way the connection is not to be used.
 */
static int
idle_usable(struct db *db)
{
	struct pollfd p;

	if (PQstatus(db->conn) != CONNECTION_OK ||
	    PQtransactionStatus(db->conn) != PQTRANS_IDLE)
		return 0;
	p.fd = PQsocket(db->conn);
	p.events = POLLIN;
	p.revents = 0;
	if (p.fd < 0)
		return 0;
	return poll(&p, 1, 0) == 0;
}

enum outcome
db_reuse(struct db **db)
{
	const char *url = config_get("DATABASE_URL");

	if (*db != NULL && (url == NULL || strcmp(url, (*db)->url) != 0 || !idle_usable(*db))) {
		db_close(*db);
		*db = NULL;
	}
	if (*db != NULL)
		return OUT_OK;
	return db_connect(db);
}

void
db_release(struct db **db)
{
	if (*db == NULL)
		return;
	/* A request that failed mid-transaction must not hand it to the next. */
	db_rollback(*db);
	if (PQstatus((*db)->conn) != CONNECTION_OK ||
	    PQtransactionStatus((*db)->conn) != PQTRANS_IDLE) {
		db_close(*db);
		*db = NULL;
	}
}

static enum db_result
classify(PGconn *conn, const PGresult *res)
{
	const char *state;

	if (PQstatus(conn) == CONNECTION_BAD)
		return DB_CONNECTION;
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (state == NULL)
		return DB_CONNECTION;
	if (strcmp(state, "23505") == 0)
		return DB_UNIQUE_VIOLATION;
	if (strncmp(state, "23", 2) == 0 || strncmp(state, "22", 2) == 0)
		return DB_CHECK_VIOLATION;
	if (strcmp(state, "40001") == 0)
		return DB_SERIALIZATION;
	if (strcmp(state, "40P01") == 0)
		return DB_DEADLOCK;
	if (strcmp(state, "57014") == 0 || strcmp(state, "55P03") == 0)
		return DB_TIMEOUT;
	if (strncmp(state, "08", 2) == 0 || strncmp(state, "57P", 3) == 0)
		return DB_CONNECTION;
	return DB_ERROR;
}

/* Classifies res (taken over; NULL: the connection failed) and hands rows over on success. */
static enum db_result
finish(struct db *db, struct db_rows **rows, PGresult *res)
{
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;
	enum db_result r;
	const char *state;

	if (st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK) {
		if (rows) {
			*rows = mem_alloc(sizeof(**rows));
			(*rows)->res = res;
		} else
			PQclear(res);
		return DB_OK;
	}
	r = classify(db->conn, res);
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	/* Expected outcomes (a duplicate delivery) are the caller's to log. */
	if (r != DB_UNIQUE_VIOLATION)
		log_msg("database error sqlstate=%s", state ? state : "none");
	PQclear(res);
	return r;
}

/* One statement as it is, in whatever transaction state the connection is. */
static enum db_result
exec_raw(struct db *db, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	if (rows)
		*rows = NULL;
	return finish(db, rows, PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0));
}

/*
 * Starts a transaction and runs sql in it, in one round trip: BEGIN, the
 * timeouts set LOCAL, the statement and, when commit is set, COMMIT, all
 * sent as one libpq pipeline (PostgreSQL protocol pipelining).
 * pipeline_send sends them: 1 when all went out, 0 when a send failed
 * (pipeline mode entered all the same), -1 when pipeline mode could not be
 * entered.  pipeline_collect reads the answers of what was sent: the
 * result of the first of them that failed, else the statement's; NULL
 * when the connection failed.  A failure aborts what follows it.  Split in
 * two so that db_exec_parallel can have several connections working at
 * once.
 */
static int
pipeline_send(struct db *db, const char *sql, int nparams, const char *const *params,
    int commit)
{
	const char *timeouts_params[] = { db->statement_ms, db->lock_ms, db->idle_ms };

	if (PQenterPipelineMode(db->conn) != 1)
		return -1;
	/* set_config(..., true) is SET LOCAL: it ends with the transaction (see db.h). */
	return PQsendQueryParams(db->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1 &&
	    PQsendQueryParams(db->conn,
		"SELECT set_config('statement_timeout', $1, true),"
		" set_config('lock_timeout', $2, true),"
		" set_config('idle_in_transaction_session_timeout', $3, true)",
		3, NULL, timeouts_params, NULL, NULL, 0) == 1 &&
	    PQsendQueryParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0) == 1 &&
	    (!commit || PQsendQueryParams(db->conn, "COMMIT", 0, NULL, NULL, NULL, NULL, 0) == 1) &&
	    PQpipelineSync(db->conn) == 1;
}

static PGresult *
pipeline_collect(struct db *db, int sent, int commit)
{
	PGresult *res, *got[4] = { NULL, NULL, NULL, NULL }, *out = NULL;
	int i, n = commit ? 4 : 3;

	if (sent == -1)
		return NULL;
	if (sent == 1) {
		/* Each query's results, then a NULL; then the sync's own result. */
		for (i = 0; i < n; i++) {
			while ((res = PQgetResult(db->conn)) != NULL) {
				if (got[i] == NULL)
					got[i] = res;
				else
					PQclear(res);
			}
		}
		PQclear(PQgetResult(db->conn));
	}
	if (PQexitPipelineMode(db->conn) != 1) {
		/* Results we cannot account for: this connection is done for. */
		log_msg("database pipeline left in an unknown state");
		for (i = 0; i < 4; i++)
			PQclear(got[i]);
		PQreset(db->conn);
		return NULL;
	}
	for (i = 0; i < n && out == NULL; i++) {
		ExecStatusType st = got[i] ? PQresultStatus(got[i]) : PGRES_FATAL_ERROR;

		if (i == 2 ? (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
			   : st != (i == 1 ? PGRES_TUPLES_OK : PGRES_COMMAND_OK))
			out = got[i];
	}
	if (out == NULL)
		out = got[2];
	for (i = 0; i < 4; i++)
		if (got[i] != out)
			PQclear(got[i]);
	return out;
}

static PGresult *
exec_in_new_transaction(struct db *db, const char *sql, int nparams,
    const char *const *params, int commit)
{
	return pipeline_collect(db, pipeline_send(db, sql, nparams, params, commit), commit);
}

enum db_result
db_exec(struct db *db, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	int pending = db->begin_pending;
	enum db_result r;

	if (rows)
		*rows = NULL;
	db->begin_pending = 0;
	/* In a transaction: the statement as it is. */
	if (!pending && PQtransactionStatus(db->conn) != PQTRANS_IDLE)
		return exec_raw(db, rows, sql, nparams, params);
	/*
	 * The first statement of db_begin's transaction, or one outside any:
	 * a transaction of its own, so the timeouts apply.  Either way one
	 * round trip, as a lone statement was before there were timeouts.
	 */
	r = finish(db, rows, exec_in_new_transaction(db, sql, nparams, params, !pending));
	/* A lone statement that failed leaves its aborted transaction behind: end it. */
	if (r != DB_OK && !pending)
		db_rollback(db);
	return r;
}

enum db_result
db_exec_parallel(struct db *db, int n, const struct db_statement *st, struct db_rows **rows)
{
	struct db *extra[LIMIT_DB_PARALLEL] = { NULL };
	struct db *on[LIMIT_DB_PARALLEL];
	int sent[LIMIT_DB_PARALLEL], i;
	enum db_result r, first = DB_OK;

	for (i = 0; i < n; i++)
		rows[i] = NULL;
	if (n < 1 || n > LIMIT_DB_PARALLEL || db->begin_pending ||
	    PQtransactionStatus(db->conn) != PQTRANS_IDLE)
		return DB_ERROR;
	/* The first statement on db, each other on a connection of its own. */
	for (i = 0; i < n; i++) {
		on[i] = db;
		if (i > 0 && db_connect(&extra[i]) == OUT_OK)
			on[i] = extra[i];
	}
	for (i = 0; i < n; i++) {
		if (on[i] != db || i == 0)
			sent[i] = pipeline_send(on[i], st[i].sql, st[i].nparams, st[i].params, 1);
		else
			sent[i] = -2;	/* no extra connection: run it on db once db is free */
	}
	for (i = 0; i < n; i++) {
		if (sent[i] == -2)
			r = db_exec(db, &rows[i], st[i].sql, st[i].nparams, st[i].params);
		else
			r = finish(on[i], &rows[i],
			    pipeline_collect(on[i], sent[i], 1));
		if (r != DB_OK && first == DB_OK)
			first = r;
	}
	for (i = 1; i < n; i++)
		db_close(extra[i]);
	if (first != DB_OK)
		for (i = 0; i < n; i++) {
			db_rows_free(rows[i]);
			rows[i] = NULL;
		}
	return first;
}

enum db_result
db_begin(struct db *db)
{
	/* Sent with the first statement: see exec_in_new_transaction. */
	db->begin_pending = 1;
	return DB_OK;
}

enum db_result
db_commit(struct db *db)
{
	if (db->begin_pending) {
		db->begin_pending = 0;	/* nothing was run: nothing to commit */
		return DB_OK;
	}
	return exec_raw(db, NULL, "COMMIT", 0, NULL);
}

void
db_rollback(struct db *db)
{
	PGresult *res;

	if (db != NULL)
		db->begin_pending = 0;
	if (db == NULL || PQstatus(db->conn) != CONNECTION_OK ||
	    PQtransactionStatus(db->conn) == PQTRANS_IDLE)
		return;
	res = PQexec(db->conn, "ROLLBACK");
	PQclear(res);
}

enum outcome
db_outcome(enum db_result r)
{
	switch (r) {
	case DB_OK:
		return OUT_OK;
	case DB_CONNECTION:
	case DB_SERIALIZATION:
	case DB_DEADLOCK:
	case DB_TIMEOUT:
		return OUT_UNAVAILABLE;
	default:
		return OUT_INTERNAL;
	}
}

int
db_retryable(enum db_result r)
{
	return r == DB_SERIALIZATION || r == DB_DEADLOCK;
}

int
db_rows_count(const struct db_rows *rows)
{
	return rows ? PQntuples(rows->res) : 0;
}

int
db_rows_fields(const struct db_rows *rows)
{
	return rows ? PQnfields(rows->res) : 0;
}

const char *
db_rows_field_name(const struct db_rows *rows, int col)
{
	if (rows == NULL || col < 0 || col >= PQnfields(rows->res))
		return NULL;
	return PQfname(rows->res, col);
}

const char *
db_rows_get(const struct db_rows *rows, int row, int col)
{
	if (rows == NULL || row < 0 || row >= PQntuples(rows->res) || col < 0 ||
	    col >= PQnfields(rows->res) || PQgetisnull(rows->res, row, col))
		return NULL;
	return PQgetvalue(rows->res, row, col);
}

void
db_rows_free(struct db_rows *rows)
{
	if (rows == NULL)
		return;
	PQclear(rows->res);
	free(rows);
}
