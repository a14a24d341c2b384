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

/* A statement text prepared on a connection under a name of ours. */
struct prepared {
	char *sql;
	unsigned long hash;
	char name[24];
};

struct db {
	PGconn *conn;
	char *url;	/* the DATABASE_URL it was made with (a secret: never logged) */
	/* set_config values for each transaction: milliseconds as text. */
	char statement_ms[16], lock_ms[16], idle_ms[16];
	int begin_pending; /* db_begin called; BEGIN goes out with the next statement */
	int prepare;	/* statements are prepared on this connection (see db_long_lived) */
	int stale;	/* reset, or its prepared statements are not the server's: close it */
	struct prepared prepared[LIMIT_DB_PREPARED];
	int nprepared;
	int preparing;	/* a pipeline in flight prepares prepared[nprepared]... */
	const char *preparing_sql;	/* ...with this text (the caller's) */
};

/* db_long_lived was called: this process runs many requests on one connection. */
static int long_lived;
/* The server did not keep a statement we prepared: a pooler; never again here. */
static int prepare_refused;

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

/* The connection is closed or was reset: the server has none of our statements now. */
static void
prepared_forget(struct db *db)
{
	int i;

	for (i = 0; i < db->nprepared; i++)
		free(db->prepared[i].sql);
	db->nprepared = 0;
}

void
db_long_lived(void)
{
	long_lived = 1;
}

/*
 * Whether statements are prepared on a new connection: in a long-lived
 * process, unless DATABASE_PREPARED_STATEMENTS is off or the connection
 * leads through a pooler.  A pooler in transaction mode (PgBouncer before
 * 1.21) hands each transaction to any server connection, where our named
 * statements do not exist.  It shows: the process id a server reports
 * when the connection starts is the pooler's own cancel key, not the
 * backend that answers pg_backend_pid().
 */
static enum outcome
prepare_wanted(PGconn *conn, int *wanted)
{
	const char *setting = config_get_default("DATABASE_PREPARED_STATEMENTS", "auto");
	PGresult *res;
	char pid[16];

	*wanted = 0;
	if (strcmp(setting, "off") == 0)
		return OUT_OK;
	if (strcmp(setting, "auto") != 0) {
		log_msg("DATABASE_PREPARED_STATEMENTS must be auto or off");
		return OUT_MISCONFIGURED;
	}
	if (!long_lived || prepare_refused)
		return OUT_OK;
	res = PQexec(conn, "SELECT pg_backend_pid()");
	snprintf(pid, sizeof(pid), "%d", PQbackendPID(conn));
	/* Unanswered (the connection failed): not prepared, and the next use says why. */
	if (PQresultStatus(res) == PGRES_TUPLES_OK && PQntuples(res) == 1) {
		*wanted = strcmp(PQgetvalue(res, 0, 0), pid) == 0;
		if (!*wanted)
			log_msg("database connection leads through a pooler:"
			    " statements are not prepared");
	}
	PQclear(res);
	return OUT_OK;
}

static enum outcome
connect_to(struct db **out, int may_prepare)
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
	if (may_prepare && (rc = prepare_wanted(conn, &may_prepare)) != OUT_OK) {
		PQfinish(conn);
		return rc;
	}
	db = mem_calloc(1, sizeof(*db));
	db->conn = conn;
	db->prepare = may_prepare;
	db->url = mem_strdup(url);
	for (i = 0; i < sizeof(timeouts) / sizeof(timeouts[0]); i++)
		snprintf((char *)db + timeouts[i].field, sizeof(db->statement_ms), "%ld", ms[i]);
	*out = db;
	return OUT_OK;
}

enum outcome
db_connect(struct db **out)
{
	return connect_to(out, 1);
}

void
db_close(struct db *db)
{
	if (db == NULL)
		return;
	prepared_forget(db);
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
	    PQtransactionStatus(db->conn) != PQTRANS_IDLE || db->stale)
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
	    PQtransactionStatus((*db)->conn) != PQTRANS_IDLE || (*db)->stale) {
		db_close(*db);
		*db = NULL;
	}
}

/* FNV-1a: statement texts are compared by hash first, then in full. */
static unsigned long
text_hash(const char *s)
{
	unsigned long h = 2166136261UL;

	while (*s)
		h = (h ^ (unsigned char)*s++) * 16777619UL;
	return h;
}

/*
 * A failure that says the server's prepared statements are not ours:
 * 26000 (one we prepared is gone) or 42P05 (the name is taken), which a
 * pooler that slipped past prepare_wanted causes: no more preparing in
 * this process; 0A000 (a cached plan's result type changed: the schema
 * changed under us): this connection is closed after the request, and the
 * next prepares afresh.
 */
static void
prepared_failed(struct db *db, const char *state)
{
	if (strcmp(state, "26000") == 0 || strcmp(state, "42P05") == 0) {
		log_msg("prepared statements do not survive on this database connection"
		    " (a pooler?): no longer prepared");
		prepare_refused = 1;
		db->prepare = 0;
		db->stale = 1;
	} else if (strcmp(state, "0A000") == 0)
		db->stale = 1;
}

/*
 * The name sql is prepared under on this connection, or NULL when it is
 * not prepared (yet).
 */
static const char *
prepared_lookup(struct db *db, const char *sql)
{
	unsigned long h;
	int i;

	if (!db->prepare)
		return NULL;
	h = text_hash(sql);
	for (i = 0; i < db->nprepared; i++)
		if (db->prepared[i].hash == h && strcmp(db->prepared[i].sql, sql) == 0)
			return db->prepared[i].name;
	return NULL;
}

/*
 * The name a new text would be prepared under (the next free entry, not
 * yet taken: prepared_keep takes it once the server has it), or NULL when
 * statements are not prepared here or the table is full (LIMIT_DB_PREPARED
 * texts: enough for every fixed statement of a program).  The text's hash
 * is in the name, so that a name never means other SQL on another
 * connection should a pooler ever mix them.
 */
static const char *
prepared_claim(struct db *db, const char *sql)
{
	struct prepared *p = &db->prepared[db->nprepared];

	if (!db->prepare || db->nprepared == LIMIT_DB_PREPARED)
		return NULL;
	p->hash = text_hash(sql);
	snprintf(p->name, sizeof(p->name), "billing_cgi_%08lx_%d", p->hash & 0xffffffffUL,
	    db->nprepared);
	return p->name;
}

static void
prepared_keep(struct db *db, const char *sql)
{
	db->prepared[db->nprepared].sql = mem_strdup(sql);
	db->nprepared++;
}

/*
 * Inside a transaction (whose timeouts are set): the name of sql,
 * preparing it the first time (a round trip); NULL when it is not
 * prepared here, or when preparing failed (the statement then runs
 * unnamed and reports its own error).
 */
static const char *
prepared_name(struct db *db, const char *sql, int nparams)
{
	const char *name = prepared_lookup(db, sql), *state;
	PGresult *res;
	int ok;

	if (name != NULL || (name = prepared_claim(db, sql)) == NULL)
		return name;
	res = PQprepare(db->conn, name, sql, nparams, NULL);
	ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (!ok && state != NULL)
		prepared_failed(db, state);
	PQclear(res);
	if (!ok)
		return NULL;
	prepared_keep(db, sql);
	return name;
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
	if (db->prepare && state != NULL)
		prepared_failed(db, state);
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
	const char *name = prepared_name(db, sql, nparams);

	if (rows)
		*rows = NULL;
	return finish(db, rows, name ?
	    PQexecPrepared(db->conn, name, nparams, params, NULL, NULL, 0) :
	    PQexecParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0));
}

/* Queues a statement in the pipeline: by its prepared name when it has one. */
static int
send_statement(struct db *db, const char *name, const char *sql, int nparams,
    const char *const *params)
{
	return name ? PQsendQueryPrepared(db->conn, name, nparams, params, NULL, NULL, 0) :
	    PQsendQueryParams(db->conn, sql, nparams, NULL, params, NULL, NULL, 0);
}

/*
 * Runs sql first in a transaction, in one round trip, sent as one libpq
 * pipeline (PostgreSQL protocol pipelining): when open is set, BEGIN, the
 * timeouts set LOCAL and the statement, and the transaction stays open;
 * otherwise the timeouts and the statement alone, in the implicit
 * transaction that the pipeline's Sync commits (or rolls back after a
 * failure), which saves the server a BEGIN and a COMMIT.
 * pipeline_send sends them: 1 when all went out, 0 when a send failed
 * (pipeline mode entered all the same), -1 when pipeline mode could not be
 * entered.  pipeline_collect reads the answers of what was sent: the
 * result of the first of them that failed (the implicit commit's failure
 * included), else the statement's; NULL when the connection failed.  A
 * failure aborts what follows it.  Split in two so that db_exec_parallel
 * can have several connections working at once.
 */
static int
pipeline_send(struct db *db, const char *sql, int nparams, const char *const *params,
    int open)
{
	/* set_config(..., true) is SET LOCAL: it ends with the transaction (see db.h). */
	static const char set_timeouts[] =
	    "SELECT set_config('statement_timeout', $1, true),"
	    " set_config('lock_timeout', $2, true),"
	    " set_config('idle_in_transaction_session_timeout', $3, true)";
	const char *timeouts_params[] = { db->statement_ms, db->lock_ms, db->idle_ms };
	/*
	 * The timeouts statement touches no table: prepared at once, before
	 * the pipeline.  A new statement text is prepared in the pipeline,
	 * after the timeouts (preparing locks the tables it names).
	 */
	const char *timeouts_name = prepared_name(db, set_timeouts, 3);
	const char *name;

	db->preparing = 0;
	if (PQenterPipelineMode(db->conn) != 1)
		return -1;
	if ((name = prepared_lookup(db, sql)) == NULL && (name = prepared_claim(db, sql)) != NULL) {
		db->preparing = 1;
		db->preparing_sql = sql;
	}
	return (!open || PQsendQueryParams(db->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1) &&
	    send_statement(db, timeouts_name, set_timeouts, 3, timeouts_params) == 1 &&
	    (!db->preparing || PQsendPrepare(db->conn, name, sql, nparams, NULL) == 1) &&
	    send_statement(db, name, sql, nparams, params) == 1 &&
	    PQpipelineSync(db->conn) == 1;
}

/* Whether a pipeline result says its query (or the Sync, last) went well. */
static int
pipeline_ok(const PGresult *res, int last)
{
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	return last ? st == PGRES_PIPELINE_SYNC : st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

static PGresult *
pipeline_collect(struct db *db, int sent, int open)
{
	PGresult *res, *got[5] = { NULL, NULL, NULL, NULL, NULL }, *out = NULL;
	/* [BEGIN,] the timeouts, [the new text's Prepare,] the statement, the Sync. */
	int i, n = open + 1 + db->preparing + 1 + 1, statement = n - 2, sync_failed = 0;
	ExecStatusType st;

	if (sent == -1)
		return NULL;
	if (sent == 1) {
		/* Each query's results, then a NULL; the Sync's result comes alone. */
		for (i = 0; i < n - 1; i++) {
			while ((res = PQgetResult(db->conn)) != NULL) {
				if (got[i] == NULL)
					got[i] = res;
				else
					PQclear(res);
			}
		}
		/*
		 * The Sync's result.  A failure of the implicit commit comes
		 * first instead (kept: its SQLSTATE says whether to retry); the
		 * Sync's own result follows it.
		 */
		got[n - 1] = PQgetResult(db->conn);
		if (got[n - 1] != NULL && PQresultStatus(got[n - 1]) != PGRES_PIPELINE_SYNC) {
			sync_failed = 1;
			while ((res = PQgetResult(db->conn)) != NULL ||
			    (res = PQgetResult(db->conn)) != NULL) {
				st = PQresultStatus(res);
				PQclear(res);
				if (st == PGRES_PIPELINE_SYNC)
					break;
			}
		}
	}
	if (PQexitPipelineMode(db->conn) != 1) {
		/* Results we cannot account for: this connection is done for. */
		log_msg("database pipeline left in an unknown state");
		for (i = 0; i < 5; i++)
			PQclear(got[i]);
		PQreset(db->conn);
		prepared_forget(db);
		db->stale = 1;
		db->preparing = 0;
		return NULL;
	}
	for (i = 0; i < n && out == NULL; i++)
		if (!pipeline_ok(got[i], i == n - 1 && !sync_failed))
			out = got[i];
	/* The Prepare went through: the server has the text under its name now. */
	if (db->preparing && pipeline_ok(got[statement - 1], 0))
		prepared_keep(db, db->preparing_sql);
	db->preparing = 0;
	if (out == NULL)
		out = got[statement];
	for (i = 0; i < 5; i++)
		if (got[i] != out)
			PQclear(got[i]);
	return out;
}

static PGresult *
exec_in_new_transaction(struct db *db, const char *sql, int nparams,
    const char *const *params, int open)
{
	return pipeline_collect(db, pipeline_send(db, sql, nparams, params, open), open);
}

enum db_result
db_exec(struct db *db, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	int pending = db->begin_pending;

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
	return finish(db, rows, exec_in_new_transaction(db, sql, nparams, params, pending));
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
		if (i > 0 && connect_to(&extra[i], 0) == OUT_OK)
			on[i] = extra[i];
	}
	for (i = 0; i < n; i++) {
		if (on[i] != db || i == 0)
			sent[i] = pipeline_send(on[i], st[i].sql, st[i].nparams, st[i].params, 0);
		else
			sent[i] = -2;	/* no extra connection: run it on db once db is free */
	}
	for (i = 0; i < n; i++) {
		if (sent[i] == -2)
			r = db_exec(db, &rows[i], st[i].sql, st[i].nparams, st[i].params);
		else
			r = finish(on[i], &rows[i],
			    pipeline_collect(on[i], sent[i], 0));
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
