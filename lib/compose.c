#include <ctype.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "compose.h"
#include "config.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "mail.h"
#include "mem.h"
#include "notify.h"
#include "template.h"

enum placeholder {
	P_APP_NAME,
	P_EMAIL,
	P_ACCOUNT_URL,
	P_PLAN,
	P_INTERVAL,
	P_AMOUNT,
	P_TRIAL_END,
	P_ENDED_AT,
	P_INVOICE_URL,
	P_INVOICE_NUMBER,
	P__MAX
};

static const char *const placeholder_names[P__MAX] = {
	[P_APP_NAME] = "app_name",
	[P_EMAIL] = "email",
	[P_ACCOUNT_URL] = "account_url",
	[P_PLAN] = "plan",
	[P_INTERVAL] = "interval",
	[P_AMOUNT] = "amount",
	[P_TRIAL_END] = "trial_end",
	[P_ENDED_AT] = "ended_at",
	[P_INVOICE_URL] = "invoice_url",
	[P_INVOICE_NUMBER] = "invoice_number",
};

#define B(p) (1u << (p))
#define EVERY_KIND (B(P_APP_NAME) | B(P_EMAIL) | B(P_ACCOUNT_URL) | B(P_PLAN))
#define INVOICE (EVERY_KIND | B(P_INTERVAL) | B(P_AMOUNT) | B(P_INVOICE_URL) | B(P_INVOICE_NUMBER))

/* The placeholders each kind offers (compose.h). */
static const unsigned kind_placeholders[NOTIFY__MAX] = {
	[NOTIFY_TRIAL_WILL_END] = EVERY_KIND | B(P_INTERVAL) | B(P_AMOUNT) | B(P_TRIAL_END),
	[NOTIFY_PAYMENT_FAILED] = INVOICE,
	[NOTIFY_PAYMENT_ACTION_REQUIRED] = INVOICE,
	[NOTIFY_SUBSCRIPTION_CANCELED] = EVERY_KIND | B(P_ENDED_AT),
	[NOTIFY_WELCOME] = EVERY_KIND | B(P_INTERVAL),
};

struct kind_templates {
	const char *names[P__MAX];	/* placeholder_names, NULL where the kind has none */
	struct template *text;		/* "Subject: ..." line, blank line, body */
	struct template *html;
};

struct compose {
	char *from_name, *from_addr;
	char *reply_name, *reply_addr;	/* NULL without MAIL_REPLY_TO */
	char *app_name;
	const char *account_url;	/* NULL when unset */
	struct kind_templates kinds[NOTIFY__MAX];
};

/* Stripe's currencies whose minor unit is not 1/100 (docs.stripe.com/currencies). */
static const char zero_decimal[] = "BIF CLP DJF GNF JPY KMF KRW MGA PYG RWF UGX VND VUV XAF XOF XPF";
static const char three_decimal[] = "BHD JOD KWD OMR TND";

int
compose_amount(long long minor, const char *currency, char *out, size_t n)
{
	char code[4];
	long long unit = 100, v = minor < 0 ? -minor : minor;
	int i, digits = 2, w;

	if (currency == NULL || strlen(currency) != 3)
		return -1;
	for (i = 0; i < 3; i++) {
		if (!isalpha((unsigned char)currency[i]))
			return -1;
		code[i] = (char)toupper((unsigned char)currency[i]);
	}
	code[3] = '\0';
	if (strstr(zero_decimal, code))
		digits = 0, unit = 1;
	else if (strstr(three_decimal, code))
		digits = 3, unit = 1000;
	if (digits == 0)
		w = snprintf(out, n, "%s%lld %s", minor < 0 ? "-" : "", v, code);
	else
		w = snprintf(out, n, "%s%lld.%0*lld %s", minor < 0 ? "-" : "", v / unit, digits,
		    v % unit, code);
	return w < 0 || (size_t)w >= n ? -1 : 0;
}

int
compose_date(const char *iso, char *out, size_t n)
{
	static const char *const months[12] = { "January", "February", "March", "April", "May",
		"June", "July", "August", "September", "October", "November", "December" };
	int y, m, d, w, consumed = 0;

	if (iso == NULL || sscanf(iso, "%4d-%2d-%2dT%*2d:%*2d:%*2dZ%n", &y, &m, &d, &consumed) != 3 ||
	    consumed != 20 || iso[consumed] != '\0' || m < 1 || m > 12 || d < 1 || d > 31)
		return -1;
	w = snprintf(out, n, "%d %s %d", d, months[m - 1], y);
	return w < 0 || (size_t)w >= n ? -1 : 0;
}

/* Loads one kind's two files; logs and counts problems. */
static int
load_kind(struct compose *c, const char *dir, enum notify_kind k)
{
	struct kind_templates *kt = &c->kinds[k];
	char path[4096], err[256];
	const char *name = notify_kind_name(k);
	int problems = 0, i;

	for (i = 0; i < P__MAX; i++)
		kt->names[i] = kind_placeholders[k] & B(i) ? placeholder_names[i] : NULL;
	snprintf(path, sizeof(path), "%s/%s.txt", dir, name);
	if (template_load(path, kt->names, P__MAX, &kt->text, err, sizeof(err)) == -1) {
		log_msg("mail template %s.txt: %s", name, err);
		problems++;
	}
	snprintf(path, sizeof(path), "%s/%s.html", dir, name);
	if (template_load(path, kt->names, P__MAX, &kt->html, err, sizeof(err)) == -1) {
		log_msg("mail template %s.html: %s", name, err);
		problems++;
	}
	if (kt->text && (template_uses(kt->text, P_ACCOUNT_URL) ||
	    (kt->html && template_uses(kt->html, P_ACCOUNT_URL))) && c->account_url == NULL) {
		log_msg("mail template %s uses {{account_url}} but MAIL_ACCOUNT_URL is not set", name);
		problems++;
	}
	return problems;
}

/* The .txt file's shape: "Subject: ..." then an empty line, checked on the file itself. */
static int
check_subject_line(const char *dir, enum notify_kind k)
{
	char path[4096], line[8];
	FILE *f;
	int ok = 0, ch;
	size_t n;

	snprintf(path, sizeof(path), "%s/%s.txt", dir, notify_kind_name(k));
	if ((f = fopen(path, "r")) == NULL)
		return 0;	/* reported by load_kind */
	n = fread(line, 1, 8, f);
	if (n == 8 && memcmp(line, "Subject:", 8) == 0) {
		while ((ch = getc(f)) != EOF && ch != '\n')
			;
		ch = getc(f);
		ok = ch == '\n' || (ch == '\r' && getc(f) == '\n');
	}
	fclose(f);
	if (!ok)
		log_msg("mail template %s.txt must start with a \"Subject: ...\" line and an"
		    " empty line", notify_kind_name(k));
	return !ok;
}

static int
text_clean(const char *s)
{
	return jsonget_clean_utf8(s, strlen(s));
}

enum outcome
compose_load(const char *default_dir, struct compose **out)
{
	struct compose *c = mem_calloc(1, sizeof(*c));
	const char *from, *reply = config_get("MAIL_REPLY_TO"), *app = config_get("MAIL_APP_NAME");
	const char *dir = config_get_default("MAIL_TEMPLATE_DIR", default_dir);
	int problems = 0, k;

	*out = NULL;
	if (config_require("MAIL_FROM", &from) != OUT_OK)
		problems++;
	else if (mail_mailbox_parse(from, &c->from_name, &c->from_addr) == -1) {
		log_msg("setting MAIL_FROM must be an address or \"Name <address>\"");
		problems++;
	}
	if (reply && mail_mailbox_parse(reply, &c->reply_name, &c->reply_addr) == -1) {
		log_msg("setting MAIL_REPLY_TO must be an address or \"Name <address>\"");
		problems++;
	}
	/*
	 * Names go into every message's headers and text: one that is not
	 * UTF-8 (or holds a control character) would fail each row in turn
	 * at sending time, so it stops the program here instead.
	 */
	if (c->from_name && !text_clean(c->from_name)) {
		log_msg("setting MAIL_FROM: the name must be UTF-8 without control characters");
		problems++;
	}
	if (c->reply_name && !text_clean(c->reply_name)) {
		log_msg("setting MAIL_REPLY_TO: the name must be UTF-8 without control characters");
		problems++;
	}
	if (app && !text_clean(app)) {
		log_msg("setting MAIL_APP_NAME must be UTF-8 without control characters");
		problems++;
	}
	c->account_url = config_get("MAIL_ACCOUNT_URL");
	if (c->account_url && !template_url_ok(c->account_url, 0)) {
		log_msg("setting MAIL_ACCOUNT_URL must be an http(s) URL");
		problems++;
	}
	if (app)
		c->app_name = mem_strdup(app);
	else if (c->from_name && c->from_name[0])
		c->app_name = mem_strdup(c->from_name);
	else if (c->from_addr)
		c->app_name = mem_strdup(mail_address_domain(c->from_addr));
	for (k = 0; k < NOTIFY__MAX; k++)
		problems += load_kind(c, dir, (enum notify_kind)k) +
		    check_subject_line(dir, (enum notify_kind)k);
	if (problems) {
		log_msg("mail: %d problem(s) with the settings or the templates in %s", problems, dir);
		compose_free(c);
		return OUT_MISCONFIGURED;
	}
	*out = c;
	return OUT_OK;
}

const char *
compose_sender(const struct compose *c)
{
	return c->from_addr;
}

/* The placeholder values for one row; strings in store (freed by the caller). */
static void
values_of(const struct compose *c, const struct compose_input *in, struct json_object *p,
    const char *values[P__MAX], char store[P__MAX][LIMIT_MAIL_VALUE])
{
	const char *s;
	long long amount;
	size_t i;

	values[P_APP_NAME] = c->app_name;
	values[P_EMAIL] = in->to;
	values[P_ACCOUNT_URL] = c->account_url;
	if ((s = jsonget_str(p, "plan")) != NULL && s[0] != '\0') {
		snprintf(store[P_PLAN], LIMIT_MAIL_VALUE, "%s", s);
		store[P_PLAN][0] = (char)toupper((unsigned char)store[P_PLAN][0]);
		for (i = 1; store[P_PLAN][i]; i++)
			if (store[P_PLAN][i] == '_')
				store[P_PLAN][i] = ' ';
		values[P_PLAN] = store[P_PLAN];
	}
	s = jsonget_str(p, "interval");
	if (s && strcmp(s, "monthly") == 0)
		values[P_INTERVAL] = "month";
	else if (s && strcmp(s, "yearly") == 0)
		values[P_INTERVAL] = "year";
	if (jsonget_int(p, "amount", &amount) == 0 &&
	    compose_amount(amount, jsonget_str(p, "currency"), store[P_AMOUNT],
	    LIMIT_MAIL_VALUE) == 0)
		values[P_AMOUNT] = store[P_AMOUNT];
	if (compose_date(jsonget_str(p, "trial_end"), store[P_TRIAL_END], LIMIT_MAIL_VALUE) == 0)
		values[P_TRIAL_END] = store[P_TRIAL_END];
	if (compose_date(jsonget_str(p, "ended_at"), store[P_ENDED_AT], LIMIT_MAIL_VALUE) == 0)
		values[P_ENDED_AT] = store[P_ENDED_AT];
	/* Re-checked here: the row may have been written by hand or by an older version. */
	if (template_url_ok((s = jsonget_str(p, "hosted_invoice_url")), 1))
		values[P_INVOICE_URL] = s;
	if ((s = jsonget_str(p, "invoice_number")) != NULL && strlen(s) < LIMIT_MAIL_VALUE)
		values[P_INVOICE_NUMBER] = s;
}

/* Renders t into out; on failure writes why into reason. */
static int
render(const struct template *t, const char *const *values, enum template_escape esc,
    struct buf *out, const char *file, char *reason, size_t n)
{
	const char *missing;
	int r = template_render(t, values, esc, out, &missing);

	if (r == -1)
		snprintf(reason, n, "cannot render %s: the notification has no value for {{%s}}",
		    file, missing);
	else if (r == -2)
		snprintf(reason, n, "cannot render %s: larger than %d bytes", file,
		    LIMIT_MAIL_MESSAGE);
	return r == 0 ? 0 : -1;
}

int
compose_message(const struct compose *c, const struct compose_input *in, struct buf *msg,
    char **message_id, char *reason, size_t reason_len)
{
	char (*store)[LIMIT_MAIL_VALUE] = mem_calloc(P__MAX, LIMIT_MAIL_VALUE);
	struct buf text = BUF_INIT(LIMIT_MAIL_MESSAGE), html = BUF_INIT(LIMIT_MAIL_MESSAGE);
	struct json_object *payload = NULL;
	const char *values[P__MAX] = { NULL }, *body, *nl;
	char *subject = NULL, *id = NULL;
	struct mail m;
	enum notify_kind k;
	size_t len;
	int r = -1;

	*message_id = NULL;
	if (notify_kind_parse(in->kind, &k) == -1) {
		snprintf(reason, reason_len, "unknown kind");
		goto out;
	}
	if (!mail_address_valid(in->to)) {
		snprintf(reason, reason_len, "the recipient address cannot be used as it is");
		goto out;
	}
	if (jsonget_parse(in->payload, strlen(in->payload), &payload) != OUT_OK) {
		snprintf(reason, reason_len, "the payload is not a JSON object");
		goto out;
	}
	values_of(c, in, payload, values, store);
	if (render(c->kinds[k].text, values, TEMPLATE_TEXT, &text, "the text template", reason,
	    reason_len) == -1 ||
	    render(c->kinds[k].html, values, TEMPLATE_HTML, &html, "the HTML template", reason,
	    reason_len) == -1)
		goto out;
	/* "Subject: ..." is the first line (values hold no line breaks), then a blank line. */
	body = buf_str(&text);
	nl = strchr(body, '\n');
	subject = mem_strndup(body + 8, nl ? (size_t)(nl - body - 8) : strlen(body + 8));
	for (len = strlen(subject); len > 0 && strchr(" \t\r", subject[len - 1]); len--)
		subject[len - 1] = '\0';
	body = nl ? nl + 1 : "";
	body += body[0] == '\r';
	body += body[0] == '\n';
	id = mail_message_id(in->id, in->created_us, mail_address_domain(c->from_addr));
	memset(&m, 0, sizeof(m));
	m.from_name = c->from_name;
	m.from_addr = c->from_addr;
	m.reply_name = c->reply_name;
	m.reply_addr = c->reply_addr;
	m.to = in->to;
	m.subject = subject + strspn(subject, " \t");
	m.text = body;
	m.html = buf_str(&html);
	m.message_id = id;
	m.kind = notify_kind_name(k);
	m.date = in->now;
	if (id == NULL || mail_render(&m, msg) == -1) {
		snprintf(reason, reason_len, "the message is larger than %d bytes",
		    LIMIT_MAIL_MESSAGE);
		goto out;
	}
	*message_id = id;
	id = NULL;
	r = 0;
out:
	json_object_put(payload);
	buf_free(&text);
	buf_free(&html);
	free(subject);
	free(id);
	free(store);
	return r;
}

void
compose_free(struct compose *c)
{
	int k;

	if (c == NULL)
		return;
	for (k = 0; k < NOTIFY__MAX; k++) {
		template_free(c->kinds[k].text);
		template_free(c->kinds[k].html);
	}
	free(c->from_name);
	free(c->from_addr);
	free(c->reply_name);
	free(c->reply_addr);
	free(c->app_name);
	free(c);
}
