/*
 * Who is calling.  The caller is REMOTE_USER when Apache authenticated
 * the request, else the `sub` of an `Authorization: Bearer <JWT>`
 * verified with OpenSSL (HS256 with AUTH_JWT_SECRET, or RS256/ES256
 * with the PEM public key in AUTH_JWT_PUBLIC_KEY_FILE), else, where the
 * endpoint allows it, the server-to-server USAGE_API_KEY which may act
 * for any user.  Only this module touches tokens and keys.
 */
#ifndef AUTH_H
#define AUTH_H

#include <stddef.h>
#include <time.h>

#include "outcome.h"

enum auth_kind {
	AUTH_REMOTE_USER,
	AUTH_JWT,
	AUTH_API_KEY,
	AUTH__MAX
};

/* Whom a bearer JWT must be meant for: its aud claim (RFC 7519 4.1.3). */
enum auth_audience {
	AUTH_FOR_USERS,		/* AUTH_JWT_AUDIENCE when set; unset: no aud at all */
	AUTH_FOR_OPERATORS,	/* ADMIN_JWT_AUDIENCE (default "billing-admin"), required */
};

struct auth_caller {
	enum auth_kind kind;
	char *user_id;		/* owned; NULL for AUTH_API_KEY (acts for any user) */
};

/*
 * Identifies the caller.  allow_api_key: whether a Bearer equal to
 * USAGE_API_KEY (constant-time compare) is accepted.  OUT_OK and
 * *caller filled; OUT_UNAUTHORIZED (WWW-Authenticate queued: a bare
 * Bearer challenge without credentials, error="invalid_token" for bad
 * ones) for no or bad credentials; OUT_FORBIDDEN for a REMOTE_USER that
 * is no usable user id (over 128 bytes, control characters);
 * OUT_MISCONFIGURED when no method is configured, or allow_api_key and
 * USAGE_API_KEY is shorter than LIMIT_BEARER_KEY_MIN bytes.
 */
enum outcome auth_identify(int allow_api_key, struct auth_caller *caller)
    __attribute__((warn_unused_result));

/*
 * The same for the operator console's API: REMOTE_USER, else a bearer
 * JWT meant for operators (AUTH_FOR_OPERATORS), never the API key.  A
 * user's token is refused (401) even when its sub is an operator's name.
 */
enum outcome auth_identify_operator(struct auth_caller *caller)
    __attribute__((warn_unused_result));

/*
 * An operator's request (GET /metrics): OUT_OK when Apache authenticated
 * it (REMOTE_USER), or when its Bearer token equals the secret in setting
 * (e.g. METRICS_TOKEN; constant-time compare).  OUT_UNAUTHORIZED with the
 * challenge queued for missing or other credentials; OUT_MISCONFIGURED
 * (logged by name) when the setting is unset or shorter than
 * LIMIT_BEARER_KEY_MIN (16) bytes and Apache did not authenticate the
 * request.
 */
enum outcome auth_operator(const char *setting) __attribute__((warn_unused_result));

/* OUT_OK when caller may act for user_id, OUT_FORBIDDEN otherwise. */
enum outcome auth_authorize(const struct auth_caller *caller, const char *user_id)
    __attribute__((warn_unused_result));

/*
 * Whether s is usable as an application user id: 1..LIMIT_USER_ID_LEN
 * bytes of UTF-8 without control characters (within the schema's
 * CHECK of 1..128 characters).  1 if valid; NULL is invalid.
 */
int auth_user_id_valid(const char *s);

/* Frees what caller owns; NULL is fine. */
void auth_caller_free(struct auth_caller *caller);

/*
 * Per-form tokens against cross-site request forgery (OWASP's HMAC-based
 * token pattern): a form that changes something carries
 *     <unix time>.<nonce: 32 hex digits>.<HMAC-SHA256 in hex>
 * over (operator, binding, time, nonce), keyed with ADMIN_CSRF_SECRET (at
 * least 32 bytes) or, without it, a key derived from STRIPE_SECRET_KEY.
 * binding says what the form does to what ("cancel_now\nuser\nsub_..."), so
 * a token is good for that one form of that one operator.  The nonce makes
 * each form unique: its submission is recorded once (admin_audit).
 *
 * auth_form_token: OUT_OK and *token (caller frees), or OUT_MISCONFIGURED
 * (no key, or ADMIN_CSRF_SECRET too short; logged by name).
 */
enum outcome auth_form_token(const char *operator, const char *binding, time_t now,
    char **token) __attribute__((warn_unused_result));

/*
 * OUT_OK and *nonce (32 hex digits, caller frees) when token was made by
 * auth_form_token for operator and binding no more than
 * LIMIT_ADMIN_FORM_SECONDS before now (and not from the future);
 * OUT_FORBIDDEN (reason logged, never the token) otherwise;
 * OUT_MISCONFIGURED without a key.
 */
enum outcome auth_form_check(const char *token, const char *operator, const char *binding,
    time_t now, char **nonce) __attribute__((warn_unused_result));

/*
 * Verifies a compact JWS against the configured key at time now
 * (exp/nbf with AUTH_JWT_LEEWAY seconds, iss/aud when configured).
 * Strict base64url (no padding, canonical); header and payload strict
 * JSON objects (jsonget_parse: no \u0000 anywhere); the key fixes the
 * algorithm (HS256 only with AUTH_JWT_SECRET, RS256 only with an RSA
 * >= 2048 key file, ES256 only with a P-256 key file, raw r||s); "none"
 * and "crit" refused.  exp is required, nbf and iat optional (iat must
 * not be in the future), each a JSON integer from 0 to
 * LIMIT_TIMESTAMP_MAX.  aud must name the audience of meant_for; for
 * users while AUTH_JWT_AUDIENCE is unset, any aud is refused (RFC 7519
 * 4.1.3).  sub must be a JSON string of 1..128 bytes
 * without control characters (a number is refused).  OUT_OK and
 * *subject (caller frees),
 * OUT_UNAUTHORIZED (reason logged, never the token), or
 * OUT_MISCONFIGURED (no key, unreadable or unsuitable key file, secret
 * under 32 bytes, bad AUTH_JWT_LEEWAY; for operators, ADMIN_JWT_AUDIENCE
 * equal to AUTH_JWT_AUDIENCE).
 */
enum outcome auth_verify_jwt(const char *token, size_t len, time_t now,
    enum auth_audience meant_for, char **subject) __attribute__((warn_unused_result));

#endif
