#include <sys/select.h>
#include <sys/socket.h>
#include <sys/time.h>

#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include <fastcgi.h>
#include <fcgiapp.h>

#include "buf.h"
#include "config.h"
#include "cors.h"
#include "limits.h"
#include "log.h"
#include "metrics.h"
#include "response.h"
#include "serve.h"

/* What outlives a request in a FastCGI process, and nothing else. */
struct serve {
	const struct serve_endpoint *ep;
	struct db *db;		/* kept between requests; NULL until first used */
	int caller_limited;	/* this request: serve_limit_caller was called */
};

enum outcome
serve_db(struct serve *srv, struct db **db)
{
	enum outcome rc = db_reuse(&srv->db);

	*db = srv->db;
	return rc;
}

/* --- rate limits -------------------------------------------------------------------- */

static enum outcome
limit(struct serve *srv, enum ratelimit_scope scope, const char *subject)
{
	const struct ratelimit_decl *d = &srv->ep->rate_limit;
	struct ratelimit_policy p;
	struct db *db;
	enum outcome rc;

	if ((rc = ratelimit_policy_for(d, scope, &p)) != OUT_OK || p.limit == 0)
		return rc;	/* off: costs nothing, not even a connection */
	if (serve_db(srv, &db) != OUT_OK) {
		log_msg("rate limit not checked: database unavailable");
		return OUT_OK;
	}
	rc = ratelimit_check(db, d, scope, &p, subject);
	if (rc == OUT_RATE_LIMITED)
		metrics_rate_limited(srv->ep->name, scope == RATELIMIT_ADDRESS ? "address" : "caller");
	return rc;
}

/* Before the handler: the client address's limit. */
static enum outcome
limit_address(struct serve *srv)
{
	char addr[64];

	if (srv->ep->rate_limit.name == NULL)
		return OUT_OK;
	if (ratelimit_client_address(addr, sizeof(addr)) == -1) {
		log_msg("no usable REMOTE_ADDR: address rate limit not checked");
		return OUT_OK;
	}
	return limit(srv, RATELIMIT_ADDRESS, addr);
}

enum outcome
serve_limit_caller(struct serve *srv, const struct auth_caller *caller)
{
	struct buf subject = BUF_INIT(LIMIT_RATE_KEY);
	enum outcome rc;

	srv->caller_limited = 1;
	if (srv->ep->rate_limit.name == NULL)
		return OUT_OK;
	/* "user:" for REMOTE_USER and JWT alike: the same user is one caller. */
	if (caller->kind == AUTH_API_KEY ? buf_addstr(&subject, "api-key") == -1
	    : caller->user_id == NULL || buf_printf(&subject, "user:%s", caller->user_id) == -1) {
		buf_free(&subject);
		return OUT_OK;
	}
	rc = limit(srv, RATELIMIT_CALLER, buf_str(&subject));
	buf_free(&subject);
	return rc;
}

/*
 * Reading a body has a time budget, LIMIT_BODY_READ_MS from the start of
 * the request, so that a client sending it slowly cannot hold a process
 * (and under FastCGI everyone queued behind it).
 */
static void
body_deadline(struct timespec *t)
{
	clock_gettime(CLOCK_MONOTONIC, t);
	t->tv_sec += LIMIT_BODY_READ_MS / 1000;
	t->tv_nsec += (long)(LIMIT_BODY_READ_MS % 1000) * 1000000;
	if (t->tv_nsec >= 1000000000) {
		t->tv_sec++;
		t->tv_nsec -= 1000000000;
	}
}

/* Milliseconds left of a body's budget; once none are, the log says so. */
static long
body_time_left(const struct timespec *deadline)
{
	struct timespec now;
	long left;

	clock_gettime(CLOCK_MONOTONIC, &now);
	left = (long)(deadline->tv_sec - now.tv_sec) * 1000 +
	    (deadline->tv_nsec - now.tv_nsec) / 1000000;
	if (left <= 0)
		log_msg("request body not complete within %d ms", LIMIT_BODY_READ_MS);
	return left;
}

/* --- plain CGI: the body on fd 0 ------------------------------------------------------- */

struct cgi_input {
	struct timespec deadline;
};

static ssize_t
cgi_read(void *ctx, char *p, size_t n)
{
	struct cgi_input *in = ctx;
	struct pollfd pfd = { STDIN_FILENO, POLLIN, 0 };
	ssize_t got;
	long left;
	int ready;

	for (;;) {
		if ((left = body_time_left(&in->deadline)) <= 0)
			return -1;
		ready = poll(&pfd, 1, left > 1000 ? 1000 : (int)left);
		if (ready == -1 && errno != EINTR)
			return -1;
		if (ready <= 0)
			continue;
		got = read(STDIN_FILENO, p, n);
		if (got == -1 && (errno == EINTR || errno == EAGAIN))
			continue;
		return got;
	}
}

/* --- FastCGI: FCGI_STDIN and FCGI_STDOUT of the accepted request ------------------- */

/*
 * mod_fcgid has the whole body before it connects to us, but
 * mod_proxy_fcgi streams it as the client sends it.  FCGX_GetStr loops
 * over read(2) until it has all it was asked for, so each call asks only
 * for what libfcgi already holds, or for one byte when it holds nothing:
 * then it blocks in one read(2), bounded by a receive timeout on the
 * request's connection set to what is left of the budget.  The budget is
 * checked between calls, so a client sending a byte now and then is cut
 * off at the deadline too.
 */
struct fcgi_request {
	FCGX_Request *fr;		/* the accepted request: its streams */
	struct timespec deadline;	/* of its body */
};

static ssize_t
fcgi_read(void *ctx, char *p, size_t n)
{
	struct fcgi_request *req = ctx;
	FCGX_Stream *body = req->fr->in;
	ptrdiff_t held = body->stop - body->rdNext;
	int chunk = n > (1 << 20) ? (1 << 20) : (int)n;
	struct timeval left_tv;
	long left;
	int got;

	if ((left = body_time_left(&req->deadline)) <= 0)
		return -1;
	if (held > 0) {
		/* A copy out of libfcgi's buffer: no read(2), nothing to bound. */
		if (held < chunk)
			chunk = (int)held;
	} else {
		chunk = 1;
		left_tv.tv_sec = left / 1000;
		left_tv.tv_usec = (left % 1000) * 1000;
		if (setsockopt(req->fr->ipcFd, SOL_SOCKET, SO_RCVTIMEO, &left_tv,
		    sizeof(left_tv)) == -1)
			return -1;
	}
	got = FCGX_GetStr(p, chunk, body);
	if (got == 0 && FCGX_GetError(body) != 0) {
		(void)body_time_left(&req->deadline);	/* logs a timeout as one */
		return -1;
	}
	return got;
}

static int
fcgi_write(void *ctx, const char *p, size_t n)
{
	struct fcgi_request *req = ctx;
	int chunk;

	while (n > 0) {
		chunk = n > (1 << 20) ? (1 << 20) : (int)n;
		if (FCGX_PutStr(p, chunk, req->fr->out) != chunk)
			return -1;
		p += chunk;
		n -= (size_t)chunk;
	}
	return 0;
}

static volatile sig_atomic_t deadline_passed;

/* SIGALRM: fcgi_deadline passed (see there). */
static void
on_alarm(int sig)
{
	(void)sig;
	deadline_passed = 1;
}

/*
 * A deadline for what libfcgi does between requests, on its own and
 * without one: reading a request's head, finishing the answer, and
 * draining a closed connection (it reads until the peer is silent for
 * 2 s, which a trickling peer never is).  From ms on, SIGALRM every
 * 100 ms interrupts whatever system call libfcgi waits in, which it
 * takes as the end of that connection.  0: no deadline.
 */
static void
fcgi_deadline(long ms)
{
	struct itimerval t = { { 0, 0 }, { 0, 0 } };

	if (ms > 0) {
		t.it_value.tv_sec = ms / 1000;
		t.it_value.tv_usec = ms % 1000 * 1000;
		t.it_interval.tv_usec = 100 * 1000;
		deadline_passed = 0;
	}
	setitimer(ITIMER_REAL, &t, NULL);
}

/*
 * The end of a request (also response_fatal's): the rest of the answer
 * out, the connection closed or kept, within the deadline.
 */
static void
fcgi_finish(void *ctx)
{
	static const struct timeval no_timeout = { 0, 0 };
	struct fcgi_request *req = ctx;

	/* fcgi_read's receive timeout would outlive the body on a kept connection. */
	if (req->fr->ipcFd >= 0)
		(void)setsockopt(req->fr->ipcFd, SOL_SOCKET, SO_RCVTIMEO, &no_timeout,
		    sizeof(no_timeout));
	fcgi_deadline(LIMIT_BODY_READ_MS);
	FCGX_Finish_r(req->fr);
	fcgi_deadline(0);
}

/* --- one request ------------------------------------------------------------------ */

/*
 * The methods to accept and to list in Allow: the handler's, HEAD
 * wherever GET goes (RFC 9110 9.3.2), OPTIONS where CORS is on.
 */
static void
allowed_methods(const struct serve_endpoint *ep, struct buf *allow, struct buf *with_options)
{
	if (buf_addstr(allow, ep->methods) == -1 ||
	    (request_method_in("GET", ep->methods) && buf_addstr(allow, ", HEAD") == -1) ||
	    buf_addstr(with_options, buf_str(allow)) == -1 ||
	    (ep->cors && buf_addstr(with_options, ", OPTIONS") == -1))
		response_fatal("method list too long");
}

static void
serve_one(struct serve *srv, char **vars, request_reader *read, void *read_ctx,
    const struct response_sink *sink)
{
	const struct serve_endpoint *ep = srv->ep;
	struct buf allow = BUF_INIT(256), with_options = BUF_INIT(256);
	struct request req;
	struct timespec start, end;
	enum outcome rc, cap_rc;
	size_t cap = LIMIT_BODY_DEFAULT;
	int head;

	clock_gettime(CLOCK_MONOTONIC, &start);
	srv->caller_limited = 0;
	log_begin(ep->name);
	request_bind(vars);
	request_init(&req);
	allowed_methods(ep, &allow, &with_options);
	head = strcmp(req.method, "HEAD") == 0 && request_method_in("GET", ep->methods);
	if (head)
		req.method = "GET";	/* the handler answers as for GET; response drops the body */
	response_begin(sink, head);

	/*
	 * The body comes off the wire first, whatever the answer will be,
	 * with the default cap when the settings are broken.
	 */
	rc = config_load();
	cap_rc = request_body_cap(&cap);
	if (cap_rc != OUT_OK)
		cap = LIMIT_BODY_DEFAULT;
	if (ep->ignores_body)
		request_drain_body(read, read_ctx);
	else
		request_take_body(&req, cap, read, read_ctx);

	if (rc == OUT_OK)
		rc = cap_rc;
	if (rc != OUT_OK)
		response_error(rc, NULL);
	else if (ep->cors && cors_handle(&req, buf_str(&allow)))
		;	/* OPTIONS answered: no database, no Stripe */
	else if ((rc = request_check_method(&req, buf_str(&with_options))) != OUT_OK)
		response_error(rc, NULL);
	else if ((rc = limit_address(srv)) != OUT_OK)
		response_error(rc, NULL);	/* 429: the handler does nothing */
	else {
		ep->handle(srv, &req);
		if (ep->rate_limit.name != NULL && !srv->caller_limited &&
		    response_status() / 100 == 2)
			log_msg("handler answered without serve_limit_caller");
	}
	if (!response_sent()) {
		log_msg("handler gave no answer");
		response_error(OUT_INTERNAL, NULL);
	}
	/* Counted in this host's metrics file: no database write. */
	clock_gettime(CLOCK_MONOTONIC, &end);
	metrics_request(ep->name, response_status(),
	    (long long)(end.tv_sec - start.tv_sec) * 1000000 + (end.tv_nsec - start.tv_nsec) / 1000);

	db_release(&srv->db);
	request_free(&req);
	request_bind(NULL);
	buf_free(&allow);
	buf_free(&with_options);
}

/* --- the two ways to run ------------------------------------------------------------- */

static volatile sig_atomic_t stopping;
/* What stops a process (on_term): mod_fcgid's, multiwatch's, a terminal's. */
static const int stop_signal_numbers[] = { SIGTERM, SIGUSR1, SIGINT };

/*
 * mod_fcgid stops a process with SIGTERM, multiwatch (behind mod_proxy_fcgi)
 * with SIGUSR1, its default (its -s option maps names to the wrong signals
 * in 1.0.0): either means finish the request in hand, then leave.
 */
static void
on_term(int sig)
{
	(void)sig;
	stopping = 1;
}

/*
 * Waits until the next request may be there: a connection on the
 * listening socket, or the server's next bytes on the connection it kept
 * (FCGI_KEEP_CONN: mod_proxy_fcgi's enablereuse).  The stop signals are
 * let in for the wait only (pselect swaps the mask atomically).
 * 0: try to accept; -1: stop.
 */
static int
fcgi_wait_request(const FCGX_Request *fr, const sigset_t *while_waiting)
{
	int fd = fr->ipcFd >= 0 ? fr->ipcFd : FCGI_LISTENSOCK_FILENO;
	sigset_t during_requests;
	fd_set readable;
	int n;

	/*
	 * A stop that came during the last request is pending.  pselect
	 * would not deliver it when the next connection is already there
	 * (under steady load, always): unblocking delivers it now.
	 */
	sigprocmask(SIG_SETMASK, while_waiting, &during_requests);
	sigprocmask(SIG_SETMASK, &during_requests, NULL);
	if (fd >= FD_SETSIZE)	/* never so many open; the read then waits, deaf */
		return stopping ? -1 : 0;
	while (!stopping) {
		FD_ZERO(&readable);
		FD_SET(fd, &readable);
		n = pselect(fd + 1, &readable, NULL, NULL, NULL, while_waiting);
		if (n > 0)
			return 0;
		if (n < 0 && errno != EINTR)
			break;
	}
	return -1;
}

/*
 * The next request's head (its parameters), from a new connection or the
 * one the server kept.  The connection is accepted here: libfcgi, given
 * no listening socket (FCGX_InitRequest), cannot accept again by itself
 * after a head that failed, and stops with EBADF instead.  The server
 * sends a head at once; one that stalls or trickles is cut off at the
 * body budget, as a slow body is.
 * 0: a request in fr; 1: none this time (another process took the
 * connection, or its head was dropped); -1: stop.
 */
static int
fcgi_accept(struct serve *srv, FCGX_Request *fr)
{
	int fd, rc, late, broken;

	if (fr->ipcFd < 0) {
		if ((fd = accept(FCGI_LISTENSOCK_FILENO, NULL, NULL)) == -1) {
			if (errno == EAGAIN || errno == EWOULDBLOCK || errno == ECONNABORTED ||
			    errno == EINTR)
				return 1;
			/* Out of descriptors or memory: a new process does better. */
			fprintf(stderr, "billing-cgi %s: accept: %s: this process ends\n",
			    srv->ep->name, strerror(errno));
			return -1;
		}
		fr->ipcFd = fd;
		/* FCGX_Accept_r begins with FCGX_Finish_r: it must not close fd. */
		fr->keepConnection = 1;
	}
	fcgi_deadline(LIMIT_BODY_READ_MS);
	rc = FCGX_Accept_r(fr);
	late = deadline_passed;
	/* A read that failed can end the parameters early, as if they were whole. */
	broken = rc >= 0 && (late || FCGX_GetError(fr->in) != 0);
	if (broken)
		FCGX_Free(fr, 1);	/* what came is no whole head: closed unanswered */
	fcgi_deadline(0);
	if (late)
		fprintf(stderr, "billing-cgi %s: a connection gave no whole request within %d ms:"
		    " dropped\n", srv->ep->name, LIMIT_BODY_READ_MS);
	return rc >= 0 && !broken ? 0 : 1;
}

static int
serve_fastcgi(struct serve *srv)
{
	FCGX_Request fr;
	struct fcgi_request req = { &fr, { 0, 0 } };
	struct response_sink sink = { fcgi_write, fcgi_finish, &req };
	struct sigaction sa;
	sigset_t stop_signals, alarm_signal, while_waiting;
	size_t i;
	int flags, rc;

	if (FCGX_Init() != 0 || FCGX_InitRequest(&fr, -1, 0) != 0) {
		fprintf(stderr, "billing-cgi %s: cannot start FastCGI\n", srv->ep->name);
		return 1;
	}
	/*
	 * No SA_RESTART: SIGALRM must interrupt libfcgi's system calls
	 * (fcgi_deadline).  SIGUSR1 replaces libfcgi's own handler, which
	 * only set a flag.
	 */
	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_term;
	sigemptyset(&sa.sa_mask);
	sigemptyset(&stop_signals);
	for (i = 0; i < sizeof(stop_signal_numbers) / sizeof(stop_signal_numbers[0]); i++) {
		sigaction(stop_signal_numbers[i], &sa, NULL);
		sigaddset(&stop_signals, stop_signal_numbers[i]);
	}
	sa.sa_handler = on_alarm;
	sigaction(SIGALRM, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);	/* a client gone is a write error, not death */
	sigemptyset(&alarm_signal);
	sigaddset(&alarm_signal, SIGALRM);
	sigprocmask(SIG_UNBLOCK, &alarm_signal, NULL);	/* whatever the parent's mask was */

	/*
	 * The stop signals reach the process only while it waits for a
	 * connection, never once it holds one.  libfcgi retries no
	 * interrupted system call: a signal just after an accept (the server's
	 * first bytes not there yet) would drop the connection unanswered,
	 * and one during a request would cut a body short.  So the wait is
	 * ours (pselect, the signals let in), and so is the accept, with them
	 * blocked, on a non-blocking socket: when another process took the
	 * connection first, accept says EAGAIN and this one waits again
	 * instead of blocking deaf to a stop.
	 */
	sigprocmask(SIG_BLOCK, &stop_signals, &while_waiting);
	for (i = 0; i < sizeof(stop_signal_numbers) / sizeof(stop_signal_numbers[0]); i++)
		sigdelset(&while_waiting, stop_signal_numbers[i]);
	if ((flags = fcntl(FCGI_LISTENSOCK_FILENO, F_GETFL)) == -1 ||
	    fcntl(FCGI_LISTENSOCK_FILENO, F_SETFL, flags | O_NONBLOCK) == -1) {
		fprintf(stderr, "billing-cgi %s: cannot start FastCGI\n", srv->ep->name);
		FCGX_Free(&fr, 1);
		return 1;
	}
	while (fcgi_wait_request(&fr, &while_waiting) == 0) {
		if ((rc = fcgi_accept(srv, &fr)) == 1)
			continue;
		if (rc < 0)
			break;
		body_deadline(&req.deadline);
		serve_one(srv, fr.envp, fcgi_read, &req, &sink);
		fcgi_finish(&req);
	}
	fcgi_deadline(LIMIT_BODY_READ_MS);	/* a kept connection's drain */
	FCGX_Free(&fr, 1);
	fcgi_deadline(0);
	return 0;
}

int
serve_main(const struct serve_endpoint *ep)
{
	struct serve srv = { ep, NULL, 0 };
	struct cgi_input in;
	int status = 0;

	if (FCGX_IsCGI()) {
		body_deadline(&in.deadline);
		serve_one(&srv, NULL, cgi_read, &in, NULL);
	} else {
		db_long_lived();
		status = serve_fastcgi(&srv);
	}
	db_close(srv.db);
	config_reset();
	return status;
}
