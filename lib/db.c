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
	char name[LIMIT_DB_NAME_LEN];
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
	int named;	/* names given on this connection: the next name's number */
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
 * The name a new text would be prepared under (taken by prepared_keep
 * once the server has it), or NULL when statements are not prepared here
 * or the table has no room for another (LIMIT_DB_PREPARED texts, minus
 * those claimed already in the pipeline being sent: enough for every
 * fixed statement of a program).  The text's hash is in the name, so that
 * a name never means other SQL on another connection should a pooler ever
 * mix them; the connection's count of names makes it unique.
 */
static int
prepared_claim(struct db *db, const char *sql, int claimed, char name[static LIMIT_DB_NAME_LEN])
{
	if (!db->prepare || db->nprepared + claimed >= LIMIT_DB_PREPARED)
		return 0;
	snprintf(name, LIMIT_DB_NAME_LEN, "billing_cgi_%08lx_%d", text_hash(sql) & 0xffffffffUL,
	    db->named++);
	return 1;
}

static void
prepared_keep(struct db *db, const char *sql, const char *name)
{
	struct prepared *p = &db->prepared[db->nprepared++];

	p->sql = mem_strdup(sql);
	p->hash = text_hash(sql);
	snprintf(p->name, sizeof(p->name), "%s", name);
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
	char fresh[LIMIT_DB_NAME_LEN];
	PGresult *res;
	int ok;

	if (name != NULL || !prepared_claim(db, sql, 0, fresh))
		return name;
	res = PQprepare(db->conn, fresh, sql, nparams, NULL);
	ok = res != NULL && PQresultStatus(res) == PGRES_COMMAND_OK;
	state = res ? PQresultErrorField(res, PG_DIAG_SQLSTATE) : NULL;
	if (!ok && state != NULL)
		prepared_failed(db, state);
	PQclear(res);
	if (!ok)
		return NULL;
	prepared_keep(db, sql, fresh);
	return db->prepared[db->nprepared - 1].name;
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

/* Where a pipeline's statements run. */
enum pipe_mode {
	PIPE_IN_TRANSACTION,	/* in the transaction open on the connection */
	PIPE_IMPLICIT,		/* the timeouts set LOCAL, then the statements, in the
				   implicit transaction that the Sync commits */
	PIPE_BEGIN		/* BEGIN, the timeouts set LOCAL, then the statements;
				   the transaction stays open */
};

/*
 * The most queries a pipeline sends before its Sync: BEGIN, the timeouts,
 * and a Prepare and an Execute per statement.
 */
#define PIPE_MAX (LIMIT_DB_BATCH * 2 + 2)

/* One pipeline in flight: what was sent, and where each answer goes. */
struct pipe {
	int sent;		/* 1 all went out, 0 a send failed, -1 no pipeline mode */
	int count;		/* queries sent before the Sync */
	int n;			/* the caller's statements */
	int at[LIMIT_DB_BATCH];		/* the index in got of statement i's answer */
	int prepare_at[LIMIT_DB_BATCH];	/* ...and of its Prepare's, or -1 */
	const char *prepare_sql[LIMIT_DB_BATCH];	/* the caller's text */
	char prepare_name[LIMIT_DB_BATCH][LIMIT_DB_NAME_LEN];
	PGresult *got[PIPE_MAX + 1];	/* the answers, then the Sync's */
};

/*
 * Sends n statements as one libpq pipeline (PostgreSQL protocol
 * pipelining): one round trip for all, run in order, a failure aborting
 * those after it.  A statement text new to a connection that prepares is
 * prepared in the pipeline, just before it and after the timeouts
 * (preparing locks the tables it names).  pipe_send sends; pipe_collect
 * reads the answers.  Split in two so that db_exec_parallel can have
 * several connections working at once.
 */
static void
pipe_send(struct db *db, struct pipe *p, int n, const struct db_statement *st,
    enum pipe_mode mode)
{
	/* set_config(..., true) is SET LOCAL: it ends with the transaction (see db.h). */
	static const char set_timeouts[] =
	    "SELECT set_config('statement_timeout', $1, true),"
	    " set_config('lock_timeout', $2, true),"
	    " set_config('idle_in_transaction_session_timeout', $3, true)";
	const char *timeouts_params[] = { db->statement_ms, db->lock_ms, db->idle_ms };
	/* The timeouts statement touches no table: prepared at once, before the pipeline. */
	const char *timeouts_name = mode == PIPE_IN_TRANSACTION ? NULL :
	    prepared_name(db, set_timeouts, 3);
	const char *name;
	int i, j, claimed = 0, ok;

	memset(p, 0, sizeof(*p));
	p->n = n;
	for (i = 0; i < n; i++)
		p->prepare_at[i] = -1;
	if (PQenterPipelineMode(db->conn) != 1) {
		p->sent = -1;
		return;
	}
	ok = mode != PIPE_BEGIN ||
	    PQsendQueryParams(db->conn, "BEGIN", 0, NULL, NULL, NULL, NULL, 0) == 1;
	p->count = mode == PIPE_BEGIN;
	if (ok && mode != PIPE_IN_TRANSACTION) {
		ok = send_statement(db, timeouts_name, set_timeouts, 3, timeouts_params) == 1;
		p->count++;
	}
	for (i = 0; i < n && ok; i++) {
		name = prepared_lookup(db, st[i].sql);
		/* A text twice in one pipeline is prepared once. */
		for (j = 0; j < i && name == NULL; j++)
			if (p->prepare_at[j] != -1 && strcmp(p->prepare_sql[j], st[i].sql) == 0)
				name = p->prepare_name[j];
		if (name == NULL && prepared_claim(db, st[i].sql, claimed, p->prepare_name[i])) {
			claimed++;
			name = p->prepare_name[i];
			p->prepare_sql[i] = st[i].sql;
			p->prepare_at[i] = p->count++;
			ok = PQsendPrepare(db->conn, name, st[i].sql, st[i].nparams, NULL) == 1;
		}
		ok = ok && send_statement(db, name, st[i].sql, st[i].nparams, st[i].params) == 1;
		p->at[i] = p->count++;
	}
	p->sent = ok && PQpipelineSync(db->conn) == 1;
}

/* Whether a pipeline result says its query (or the Sync, last) went well. */
static int
pipeline_ok(const PGresult *res, int last)
{
	ExecStatusType st = res ? PQresultStatus(res) : PGRES_FATAL_ERROR;

	return last ? st == PGRES_PIPELINE_SYNC : st == PGRES_COMMAND_OK || st == PGRES_TUPLES_OK;
}

/*
 * Reads the answers of what pipe_send sent.  DB_OK and, when rows is not
 * NULL, each statement's result in rows[i]; otherwise the failure of the
 * first query that failed (the implicit commit's included), rows all NULL.
 */
static enum db_result
pipe_collect(struct db *db, struct pipe *p, struct db_rows **rows)
{
	PGresult *res;
	ExecStatusType st;
	int i, sync_failed = 0, failed = -1;
	enum db_result r;

	if (p->sent == 1) {
		/* Each query's results, then a NULL; the Sync's result comes alone. */
		for (i = 0; i < p->count; i++) {
			while ((res = PQgetResult(db->conn)) != NULL) {
				if (p->got[i] == NULL)
					p->got[i] = res;
				else
					PQclear(res);
			}
		}
		/*
		 * The Sync's result.  A failure of the implicit commit comes
		 * first instead (kept: its SQLSTATE says whether to retry); the
		 * Sync's own result follows it.
		 */
		p->got[p->count] = PQgetResult(db->conn);
		if (p->got[p->count] != NULL &&
		    PQresultStatus(p->got[p->count]) != PGRES_PIPELINE_SYNC) {
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
	if (p->sent == -1 || PQexitPipelineMode(db->conn) != 1) {
		if (p->sent != -1) {
			/* Results we cannot account for: this connection is done for. */
			log_msg("database pipeline left in an unknown state");
			PQreset(db->conn);
			prepared_forget(db);
			db->stale = 1;
		}
		for (i = 0; i <= p->count; i++)
			PQclear(p->got[i]);
		return finish(db, NULL, NULL);
	}
	for (i = 0; i <= p->count && failed == -1; i++)
		if (!pipeline_ok(p->got[i], i == p->count && !sync_failed))
			failed = i;
	/* A Prepare that went through: the server has the text under its name now. */
	for (i = 0; i < p->n; i++)
		if (p->prepare_at[i] != -1 && pipeline_ok(p->got[p->prepare_at[i]], 0))
			prepared_keep(db, p->prepare_sql[i], p->prepare_name[i]);
	for (i = 0; i < p->n; i++) {
		if (rows)
			rows[i] = NULL;
		if (failed == -1 && rows) {
			rows[i] = mem_alloc(sizeof(**rows));
			rows[i]->res = p->got[p->at[i]];
			p->got[p->at[i]] = NULL;
		}
	}
	/* finish takes the failed result over (NULL: the connection failed). */
	r = failed == -1 ? DB_OK : finish(db, NULL, p->got[failed]);
	for (i = 0; i <= p->count; i++)
		if (i != failed)
			PQclear(p->got[i]);
	return r;
}

static enum db_result
exec_piped(struct db *db, int n, const struct db_statement *st, struct db_rows **rows,
    enum pipe_mode mode)
{
	struct pipe p;

	pipe_send(db, &p, n, st, mode);
	return pipe_collect(db, &p, rows);
}

enum db_result
db_exec_batch(struct db *db, int n, const struct db_statement *st, struct db_rows **rows)
{
	int pending = db->begin_pending;
	int i;

	if (rows)
		for (i = 0; i < n; i++)
			rows[i] = NULL;
	if (n < 1 || n > LIMIT_DB_BATCH)
		return DB_ERROR;
	db->begin_pending = 0;
	/* In a transaction: the statement as it is. */
	if (!pending && PQtransactionStatus(db->conn) != PQTRANS_IDLE)
		return n == 1 ? exec_raw(db, rows, st[0].sql, st[0].nparams, st[0].params) :
		    exec_piped(db, n, st, rows, PIPE_IN_TRANSACTION);
	/*
	 * The first statements of db_begin's transaction, or ones outside
	 * any: the timeouts go with them, and BEGIN or the implicit
	 * transaction's Sync.  One round trip either way.
	 */
	return exec_piped(db, n, st, rows, pending ? PIPE_BEGIN : PIPE_IMPLICIT);
}

enum db_result
db_exec(struct db *db, struct db_rows **rows, const char *sql, int nparams,
    const char *const *params)
{
	struct db_statement st = { sql, nparams, params };

	return db_exec_batch(db, 1, &st, rows);
}

enum db_result
db_exec_parallel(struct db *db, int n, const struct db_statement *st, struct db_rows **rows)
{
	struct db *extra[LIMIT_DB_PARALLEL] = { NULL };
	struct db *on[LIMIT_DB_PARALLEL];
	struct pipe pipes[LIMIT_DB_PARALLEL];
	int deferred[LIMIT_DB_PARALLEL], i;
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
		/* No extra connection: run it on db once db is free. */
		deferred[i] = i > 0 && on[i] == db;
		if (!deferred[i])
			pipe_send(on[i], &pipes[i], 1, &st[i], PIPE_IMPLICIT);
	}
	for (i = 0; i < n; i++) {
		if (deferred[i])
			r = db_exec(db, &rows[i], st[i].sql, st[i].nparams, st[i].params);
		else
			r = pipe_collect(on[i], &pipes[i], &rows[i]);
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
	/* Sent with the first statement: see db_exec_batch. */
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

enum db_result
db_hold_idle(struct db *db, long ms)
{
	char value[24];

	if (ms <= strtol(db->idle_ms, NULL, 10))
		return DB_OK;
	snprintf(value, sizeof(value), "%ld", ms);
	return DB_QUERY(db, NULL, "SELECT set_config('idle_in_transaction_session_timeout', $1, true)",
	    value);
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
