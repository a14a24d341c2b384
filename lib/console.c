#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <openssl/evp.h>

#include "auth.h"
#include "chart.h"
#include "console.h"
#include "digest.h"
#include "html.h"
#include "jsonget.h"
#include "limits.h"
#include "log.h"
#include "response.h"

/*
 * The one style sheet, inline; the Content-Security-Policy allows exactly
 * it by its SHA-256 (CSP 3, hash-source), so no style attribute and no
 * other sheet can apply.  c1..c8 colour chart series (fill for shapes,
 * stroke for lines, background for legend keys).
 */
static const char css[] =
    "body{font:14px/1.45 system-ui,-apple-system,\"Segoe UI\",Roboto,sans-serif;margin:0;"
    "color:#1f2328;background:#f6f8fa}"
    "header{background:#24292f;color:#fff;padding:8px 20px;display:flex;gap:18px;"
    "align-items:center;flex-wrap:wrap}"
    "header a{color:#fff;text-decoration:none;font-weight:600}"
    "header form{display:flex;gap:6px;margin:0}"
    "header .who{margin-left:auto;opacity:.8}"
    "main{max-width:1200px;margin:0 auto;padding:12px 20px 40px}"
    "h1{font-size:22px;margin:8px 0 14px}h2{font-size:16px;margin:22px 0 8px}"
    "h3{font-size:14px;margin:4px 0 6px}"
    ".cards{display:grid;grid-template-columns:repeat(auto-fill,minmax(165px,1fr));gap:10px}"
    ".card{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:8px 12px}"
    ".card b{display:block;font-size:19px;font-variant-numeric:tabular-nums}"
    ".card span{color:#57606a;font-size:12px}"
    ".panel{background:#fff;border:1px solid #d0d7de;border-radius:6px;padding:10px 14px;"
    "margin:10px 0}"
    ".grid2{display:grid;grid-template-columns:repeat(auto-fit,minmax(480px,1fr));gap:10px}"
    "table{border-collapse:collapse;width:100%;background:#fff}"
    "th,td{border-bottom:1px solid #d0d7de;padding:4px 8px;text-align:left;vertical-align:top}"
    "th{font-weight:600;background:#f6f8fa}td{white-space:nowrap}td.wrap{white-space:normal;"
    "min-width:12em}"
    ".n{text-align:right;font-variant-numeric:tabular-nums;white-space:nowrap}"
    ".scroll{overflow-x:auto}"
    "svg.chart{width:100%;height:auto;display:block}"
    "svg text{font-size:11px;fill:#57606a}"
    ".ylab,.rlab{text-anchor:end}.xlab{text-anchor:middle}.vlab{text-anchor:start}"
    "line.grid{stroke:#eaeef2}line.zero{stroke:#8c959f}rect.track{fill:#f3f4f6}"
    "polyline.ln{fill:none;stroke-width:2}"
    ".c1{fill:#2da44e;stroke:#2da44e;background:#2da44e}"
    ".c2{fill:#1f6feb;stroke:#1f6feb;background:#1f6feb}"
    ".c3{fill:#8250df;stroke:#8250df;background:#8250df}"
    ".c4{fill:#d4a72c;stroke:#d4a72c;background:#d4a72c}"
    ".c5{fill:#cf222e;stroke:#cf222e;background:#cf222e}"
    ".c6{fill:#0a7ea4;stroke:#0a7ea4;background:#0a7ea4}"
    ".c7{fill:#8c959f;stroke:#8c959f;background:#8c959f}"
    ".c8{fill:#bc4c00;stroke:#bc4c00;background:#bc4c00}"
    ".legend{list-style:none;padding:0;margin:4px 0 0;display:flex;gap:14px;flex-wrap:wrap;"
    "font-size:12px}"
    ".key{display:inline-block;width:10px;height:10px;margin-right:5px;border-radius:2px}"
    ".msg{padding:10px 14px;border-radius:6px;margin:12px 0;background:#fff}"
    ".ok{border:1px solid #4ac26b;background:#dafbe1}.err{border:1px solid #ff8182;"
    "background:#ffebe9}"
    "button,.button{font:inherit;font-size:13px;padding:2px 9px;border:1px solid #d0d7de;"
    "border-radius:6px;background:#f6f8fa;color:#1f2328;cursor:pointer;text-decoration:none;"
    "display:inline-block;margin:1px 0}"
    ".danger{color:#cf222e;border-color:#ff8182}"
    "input,select{font:inherit;padding:3px 6px;border:1px solid #d0d7de;border-radius:6px}"
    "input.reason{width:min(40em,100%)}"
    "form.filter{display:flex;gap:8px;align-items:center;flex-wrap:wrap;margin:0 0 10px}"
    ".muted{color:#57606a}"
    "pre{white-space:pre-wrap;word-break:break-all;margin:4px 0;font-size:12px}"
    "dl{display:grid;grid-template-columns:max-content 1fr;gap:2px 14px;margin:0}"
    "dt{color:#57606a}dd{margin:0}";

/* Times as the pages show them, UTC whatever the session's TimeZone. */
#define UTC(col) "to_char(" col " AT TIME ZONE 'UTC', 'YYYY-MM-DD HH24:MI')"

/* The CSP hash-source of css: 'sha256-<base64>'; a constant, so computed once per process. */
static const char *
style_hash(void)
{
	static char source[64];
	unsigned char digest[DIGEST_SHA256_LEN];

	if (source[0] == '\0') {
		digest_sha256(css, sizeof(css) - 1, digest);
		EVP_EncodeBlock((unsigned char *)source, digest, sizeof(digest));
	}
	return source;
}

/* --- the frame of every page ------------------------------------------------ */

static void
page_begin(struct html *h, const char *title, const char *operator)
{
	html_raw(h, "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
	    "<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">"
	    "<meta name=\"referrer\" content=\"same-origin\"><title>");
	html_txt(h, title);
	html_raw(h, " &middot; billing console</title><style>");
	html_raw(h, css);
	html_raw(h, "</style></head><body><header><a href=\"./\">Billing console</a>"
	    "<a href=\"./\">Dashboard</a>"
	    "<form method=\"get\" action=\"search\" role=\"search\">"
	    "<input type=\"search\" name=\"q\" placeholder=\"user id, e-mail, cus_&hellip;, "
	    "sub_&hellip;\" aria-label=\"Search customers\" size=\"28\">"
	    "<button type=\"submit\">Search</button></form>");
	if (operator != NULL) {
		html_raw(h, "<span class=\"who\">signed in as ");
		html_txt(h, operator);
		html_raw(h, "</span>");
	}
	html_raw(h, "</header><main>");
}

/* Answers the page with its security headers; 500 if it outgrew LIMIT_PAGE. */
static enum outcome
page_send(struct html *h, int status)
{
	html_raw(h, "</main></body></html>\n");
	if (html_failed(h)) {
		log_msg("page larger than %d bytes", LIMIT_PAGE);
		html_free(h);
		return OUT_INTERNAL;
	}
	response_header("Content-Security-Policy",
	    "default-src 'none'; style-src 'sha256-%s'; form-action 'self'; "
	    "frame-ancestors 'none'; base-uri 'none'", style_hash());
	response_header("X-Frame-Options", "DENY");
	response_header("Referrer-Policy", "same-origin");
	response_header("Cross-Origin-Opener-Policy", "same-origin");
	response_body(status, "text/html; charset=utf-8", buf_str(&h->b), h->b.len);
	html_free(h);
	return OUT_OK;
}

void
console_error(const char *operator, enum outcome rc, const char *message)
{
	struct html h = HTML_INIT;

	page_begin(&h, "Error", operator);
	html_rawf(&h, "<h1>%d ", outcome_status(rc));
	html_txt(&h, outcome_reason(outcome_status(rc)));
	html_raw(&h, "</h1><div class=\"msg err\">");
	html_txt(&h, message ? message : outcome_message(rc));
	html_raw(&h, "</div><p><a href=\"./\">Back to the dashboard</a></p>");
	/* A 401's challenge was queued by whoever refused (admin_operator). */
	if (page_send(&h, outcome_status(rc)) != OUT_OK)
		response_error(OUT_INTERNAL, NULL);
}

void
console_redirect_to_slash(void)
{
	/* RFC 9110 10.2.2: a relative reference, resolved against /.../admin. */
	response_header("Location", "admin/");
	response_empty(301);
}

/* A link to a customer page. */
static void
customer_link(struct html *h, const char *user_id)
{
	html_raw(h, "<a href=\"customer?user=");
	html_url_arg(h, user_id);
	html_raw(h, "\">");
	html_txt(h, user_id);
	html_raw(h, "</a>");
}

/* A table cell with text, or a muted dash for NULL. */
static void
td_txt(struct html *h, const char *v)
{
	html_raw(h, "<td>");
	if (v != NULL)
		html_txt(h, v);
	else
		html_raw(h, "<span class=\"muted\">&ndash;</span>");
	html_raw(h, "</td>");
}

static void td_int(struct html *h, const char *v);

/* A cell of free text (reasons, errors): it may wrap. */
static void
td_wrap(struct html *h, const char *v)
{
	html_raw(h, "<td class=\"wrap\">");
	html_txt(h, v);
	html_raw(h, "</td>");
}

/* A usage amount: storage is counted in bytes, shown in binary units. */
static void
td_usage(struct html *h, const char *type, const char *v)
{
	static const char *const units[] = { "B", "KiB", "MiB", "GiB", "TiB" };
	double x;
	int u = 0;

	if (v == NULL || strcmp(type, "storage") != 0) {
		td_int(h, v);
		return;
	}
	for (x = (double)strtoll(v, NULL, 10); x >= 1024 && u < 4; u++)
		x /= 1024;
	html_rawf(h, "<td class=\"n\">%.*f&nbsp;%s</td>", u == 0 || x >= 100 ? 0 : 1, x, units[u]);
}

static void
td_int(struct html *h, const char *v)
{
	html_raw(h, "<td class=\"n\">");
	if (v != NULL)
		html_int(h, strtoll(v, NULL, 10));
	else
		html_raw(h, "<span class=\"muted\">&ndash;</span>");
	html_raw(h, "</td>");
}

static void
td_money(struct html *h, const char *v, const char *currency)
{
	html_raw(h, "<td class=\"n\">");
	if (v != NULL)
		html_money(h, strtoll(v, NULL, 10), currency);
	else
		html_raw(h, "<span class=\"muted\">&ndash;</span>");
	html_raw(h, "</td>");
}

/* --- the dashboard ------------------------------------------------------------ */

/* A member as a number: NAN when absent, null or not a number. */
static double
num(struct json_object *o, const char *key)
{
	struct json_object *v;

	if (o == NULL || !json_object_object_get_ex(o, key, &v) || v == NULL)
		return NAN;
	if (json_object_is_type(v, json_type_int))
		return (double)json_object_get_int64(v);
	if (json_object_is_type(v, json_type_double))
		return json_object_get_double(v);
	return NAN;
}

/* A headline figure: label (and the month it is of, or NULL), then the value. */
static void
card(struct html *h, const char *figure, const char *label, const char *month)
{
	html_rawf(h, "<div class=\"card\" data-figure=\"%s\"><span>", figure);
	html_txt(h, label);
	if (month != NULL) {
		html_raw(h, ", ");
		html_txt(h, month);
	}
	html_raw(h, "</span><b>");
}

static void
card_end(struct html *h)
{
	html_raw(h, "</b></div>");
}

static void
card_money(struct html *h, const char *figure, const char *label, const char *month, double v,
    const char *cur)
{
	card(h, figure, label, month);
	if (isnan(v))
		html_raw(h, "&ndash;");
	else
		html_money(h, llround(v), cur);
	card_end(h);
}

static void
card_count(struct html *h, const char *figure, const char *label, double v)
{
	card(h, figure, label, NULL);
	if (isnan(v))
		html_raw(h, "&ndash;");
	else
		html_int(h, llround(v));
	card_end(h);
}

static void
card_rate(struct html *h, const char *figure, const char *label, const char *month, double v)
{
	card(h, figure, label, month);
	html_percent(h, v, 1);
	card_end(h);
}

static const char *const tiers[] = { "free", "basic", "pro", "enterprise" };
static const char *const statuses[] = { "active", "trialing", "past_due", "unpaid", "paused",
	"incomplete", "incomplete_expired", "canceled" };
#define NTIERS (sizeof(tiers) / sizeof(tiers[0]))
#define NSTATUSES (sizeof(statuses) / sizeof(statuses[0]))

/* The period form: months and the currencies that have MRR. */
static void
period_form(struct html *h, const struct admin_period *p, const char *currency,
    struct json_object *mrr)
{
	int listed = 0;

	html_raw(h, "<form class=\"filter\" method=\"get\" action=\"./\">"
	    "<label>From <input type=\"month\" name=\"from\" value=\"");
	html_attr(h, p->from);
	html_raw(h, "\"></label><label>to <input type=\"month\" name=\"to\" value=\"");
	html_attr(h, p->to);
	html_raw(h, "\"></label><label>currency <select name=\"currency\">");
	if (mrr != NULL) {
		json_object_object_foreach(mrr, cur, v) {
			(void)v;
			html_raw(h, "<option value=\"");
			html_attr(h, cur);
			html_raw(h, strcmp(cur, currency) == 0 ? "\" selected>" : "\">");
			html_txt(h, cur);
			html_raw(h, "</option>");
			listed |= strcmp(cur, currency) == 0;
		}
	}
	if (!listed) {
		html_raw(h, "<option selected>");
		html_txt(h, currency);
		html_raw(h, "</option>");
	}
	html_raw(h, "</select></label><button type=\"submit\">Show</button>"
	    "<a class=\"button\" href=\"../api/admin/analytics?from=");
	html_url_arg(h, p->from);
	html_raw(h, "&amp;to=");
	html_url_arg(h, p->to);
	html_raw(h, "&amp;currency=");
	html_url_arg(h, currency);
	html_raw(h, "&amp;format=csv\">CSV</a><a class=\"button\" href=\"../api/admin/analytics?from=");
	html_url_arg(h, p->from);
	html_raw(h, "&amp;to=");
	html_url_arg(h, p->to);
	html_raw(h, "&amp;currency=");
	html_url_arg(h, currency);
	html_raw(h, "\">JSON</a></form>");
}

/* The monthly series as columns of values, for the charts. */
struct series_data {
	size_t n;
	const char **labels;
	double *v[16];
};

static void
series_free(struct series_data *s)
{
	size_t i;

	free(s->labels);
	for (i = 0; i < sizeof(s->v) / sizeof(s->v[0]); i++)
		free(s->v[i]);
}

static void
mrr_charts(struct html *h, struct json_object *months, const char *cur)
{
	static const char *const keys[] = { "mrr_end", "new_mrr", "expansion_mrr",
		"reactivation_mrr", "contraction_mrr", "churned_mrr", "customer_churn_rate",
		"gross_mrr_churn_rate", "net_mrr_churn_rate", "trial_conversion_rate" };
	struct series_data d = { 0 };
	struct json_object *m;
	size_t i, k, nk = sizeof(keys) / sizeof(keys[0]);
	double sign;

	d.n = months ? json_object_array_length(months) : 0;
	if (d.n == 0)
		return;
	d.labels = calloc(d.n, sizeof(*d.labels));
	for (k = 0; k < nk; k++)
		d.v[k] = calloc(d.n, sizeof(double));
	if (d.labels == NULL || d.v[nk - 1] == NULL)
		response_fatal("out of memory");
	for (i = 0; i < d.n; i++) {
		m = json_object_array_get_idx(months, i);
		d.labels[i] = jsonget_str(m, "month");
		for (k = 0; k < nk; k++) {
			/* Contraction and churn are drawn below the zero line. */
			sign = (k == 4 || k == 5) ? -1 : 1;
			d.v[k][i] = sign * num(m, keys[k]);
		}
	}
	{
		const struct chart_series mrr[] = { { "MRR", "c2", d.v[0] } };
		const struct chart_series moves[] = {
			{ "New", "c1", d.v[1] }, { "Expansion", "c2", d.v[2] },
			{ "Reactivation", "c3", d.v[3] }, { "Contraction", "c4", d.v[4] },
			{ "Churn", "c5", d.v[5] },
		};
		const struct chart_series churn[] = {
			{ "Customer churn", "c5", d.v[6] }, { "Gross MRR churn", "c4", d.v[7] },
			{ "Net MRR churn", "c3", d.v[8] },
		};
		const struct chart_series conversion[] = { { "Trial conversion", "c1", d.v[9] } };
		struct chart c = { "MRR at the end of each month", d.labels, d.n, mrr, 1,
			CHART_MONEY, cur };

		html_raw(h, "<div class=\"panel\"><h3>MRR by month</h3>");
		chart_columns(h, &c);
		html_raw(h, "</div><div class=\"panel\"><h3>MRR movements by month</h3>");
		c.title = "MRR movements: new, expansion, reactivation up; contraction, churn down";
		c.series = moves;
		c.nseries = 5;
		chart_columns(h, &c);
		html_raw(h, "</div><div class=\"panel\"><h3>Churn by month</h3>");
		c.title = "Customer, gross MRR and net MRR churn rates by month";
		c.series = churn;
		c.nseries = 3;
		c.format = CHART_PERCENT;
		chart_lines(h, &c);
		html_raw(h, "</div><div class=\"panel\"><h3>Trial conversion by month</h3>");
		c.title = "Trial conversion rate by month (trials that became paying / trials that ended)";
		c.series = conversion;
		c.nseries = 1;
		chart_lines(h, &c);
		html_raw(h, "</div>");
	}
	series_free(&d);
}

static void
tier_status_chart(struct html *h, struct json_object *snapshot)
{
	static const char *const css_of[NSTATUSES] = { "c1", "c6", "c4", "c5", "c7", "c3",
		"c8", "c7" };
	struct json_object *cells = jsonget_obj(snapshot, "byTierAndStatus");
	double v[NSTATUSES][NTIERS];
	struct chart_series s[NSTATUSES];
	struct chart c = { "Subscriptions by tier and status", tiers, NTIERS, s, NSTATUSES,
		CHART_COUNT, NULL };
	size_t t, k;

	for (k = 0; k < NSTATUSES; k++) {
		for (t = 0; t < NTIERS; t++) {
			v[k][t] = num(jsonget_obj(cells, tiers[t]), statuses[k]);
			if (isnan(v[k][t]))
				v[k][t] = 0;
		}
		s[k].name = statuses[k];
		s[k].css = css_of[k];
		s[k].values = v[k];
	}
	html_raw(h, "<div class=\"panel\"><h3>Subscriptions by tier and status</h3>");
	chart_bars(h, &c, 0);
	html_raw(h, "</div>");
}

static void
quota_chart(struct html *h, struct json_object *util)
{
	size_t n = util ? json_object_array_length(util) : 0, i, rows = 0;
	const char **labels = calloc(n + 1, sizeof(*labels));
	char (*names)[64] = calloc(n + 1, sizeof(*names));
	double *v = calloc(n + 1, sizeof(double));
	struct json_object *q;
	struct chart_series s = { "Average utilisation", "c6", v };
	struct chart c = { "Average quota utilisation this month by tier and usage type", labels,
		0, &s, 1, CHART_PERCENT, NULL };

	if (labels == NULL || names == NULL || v == NULL)
		response_fatal("out of memory");
	/* Only limited quotas have a utilisation: unlimited rows are left out. */
	for (i = 0; i < n; i++) {
		q = json_object_array_get_idx(util, i);
		if (isnan(num(q, "monthly_limit")))
			continue;
		snprintf(names[rows], sizeof(names[rows]), "%s %s",
		    jsonget_str(q, "tier") ? jsonget_str(q, "tier") : "?",
		    jsonget_str(q, "usage_type") ? jsonget_str(q, "usage_type") : "?");
		labels[rows] = names[rows];
		v[rows] = num(q, "avg_utilisation");
		rows++;
	}
	c.n = rows;
	html_raw(h, "<div class=\"panel\"><h3>Quota utilisation this month</h3>");
	chart_bars(h, &c, 1.0);
	html_raw(h, "</div>");
	free(labels);
	free(names);
	free(v);
}

static void
months_table(struct html *h, struct json_object *months, const char *cur)
{
	static const struct {
		const char *key, *head;
		char kind;	/* m money, c count, r rate */
	} cols[] = {
		{ "mrr_end", "MRR", 'm' }, { "new_mrr", "New", 'm' },
		{ "expansion_mrr", "Expansion", 'm' }, { "reactivation_mrr", "Reactivation", 'm' },
		{ "contraction_mrr", "Contraction", 'm' }, { "churned_mrr", "Churned", 'm' },
		{ "net_new_mrr", "Net new", 'm' }, { "customers_end", "Paying customers", 'c' },
		{ "new_customers", "New cust.", 'c' }, { "churned_customers", "Lost cust.", 'c' },
		{ "customer_churn_rate", "Customer churn", 'r' },
		{ "gross_mrr_churn_rate", "Gross MRR churn", 'r' },
		{ "net_mrr_churn_rate", "Net MRR churn", 'r' }, { "upgrades", "Upgrades", 'c' },
		{ "downgrades", "Downgrades", 'c' }, { "trials_started", "Trials started", 'c' },
		{ "trials_ended", "Trials ended", 'c' }, { "trials_converted", "Converted", 'c' },
		{ "trial_conversion_rate", "Trial conversion", 'r' },
	};
	size_t i, k, n = months ? json_object_array_length(months) : 0;
	struct json_object *m;
	double v;

	html_raw(h, "<h2>By month</h2><div class=\"scroll\"><table id=\"months\"><tr><th>Month</th>");
	for (k = 0; k < sizeof(cols) / sizeof(cols[0]); k++)
		html_rawf(h, "<th class=\"n\">%s</th>", cols[k].head);
	html_raw(h, "</tr>");
	for (i = n; i-- > 0;) {
		m = json_object_array_get_idx(months, i);
		html_raw(h, "<tr data-month=\"");
		html_attr(h, jsonget_str(m, "month"));
		html_raw(h, "\"><td>");
		html_txt(h, jsonget_str(m, "month"));
		html_raw(h, "</td>");
		for (k = 0; k < sizeof(cols) / sizeof(cols[0]); k++) {
			v = num(m, cols[k].key);
			html_rawf(h, "<td class=\"n\" data-col=\"%s\">", cols[k].key);
			if (isnan(v))
				html_raw(h, "&ndash;");
			else if (cols[k].kind == 'm')
				html_money(h, llround(v), NULL);
			else if (cols[k].kind == 'c')
				html_int(h, llround(v));
			else
				html_percent(h, v, 2);
			html_raw(h, "</td>");
		}
		html_raw(h, "</tr>");
	}
	html_raw(h, "</table></div><p class=\"muted\">Amounts in ");
	html_txt(h, cur);
	html_raw(h, "; definitions in the README (&ldquo;Business figures&rdquo;).</p>");
}

enum outcome
console_dashboard(struct db *db, const char *operator, const struct admin_period *p)
{
	struct html h = HTML_INIT;
	struct json_object *report = NULL, *snap, *months, *by_status, *last = NULL;
	const char *cur;
	enum outcome rc;
	size_t n;

	if ((rc = admin_report(db, p, &report)) != OUT_OK)
		return rc;
	cur = jsonget_str(report, "currency");
	if (cur == NULL)
		cur = "usd";
	snap = jsonget_obj(report, "snapshot");
	months = jsonget_array(report, "months");
	by_status = jsonget_obj(snap, "byStatus");
	n = months ? json_object_array_length(months) : 0;
	if (n > 0)
		last = json_object_array_get_idx(months, n - 1);

	page_begin(&h, "Dashboard", operator);
	html_raw(&h, "<h1>Dashboard</h1>");
	period_form(&h, p, cur, jsonget_obj(snap, "monthlyRecurringRevenue"));
	html_raw(&h, "<div class=\"cards\">");
	card_money(&h, "mrr", "MRR now", NULL, num(jsonget_obj(snap, "monthlyRecurringRevenue"), cur),
	    cur);
	card_money(&h, "arr", "ARR now", NULL, num(jsonget_obj(snap, "annualRecurringRevenue"), cur),
	    cur);
	card_count(&h, "paying", "Paying customers", num(jsonget_obj(snap, "payingCustomers"), cur));
	card(&h, "arpa", "ARPA now", NULL);
	if (isnan(num(jsonget_obj(snap, "averageRevenuePerAccount"), cur)))
		html_raw(&h, "&ndash;");
	else
		html_money(&h, llround(num(jsonget_obj(snap, "averageRevenuePerAccount"), cur)), cur);
	card_end(&h);
	card_count(&h, "subscriptions", "Subscriptions", num(snap, "totalSubscriptions"));
	card_count(&h, "active", "Active", num(by_status, "active"));
	card_count(&h, "trialing", "Trialing", num(by_status, "trialing"));
	card_count(&h, "past_due", "Past due", num(by_status, "past_due"));
	if (last != NULL) {
		const char *m = jsonget_str(last, "month");

		card_money(&h, "net_new_mrr", "Net new MRR", m, num(last, "net_new_mrr"), cur);
		card_rate(&h, "customer_churn_rate", "Customer churn", m,
		    num(last, "customer_churn_rate"));
		card_rate(&h, "trial_conversion_rate", "Trial conversion", m,
		    num(last, "trial_conversion_rate"));
	}
	html_raw(&h, "</div>");
	html_raw(&h, "<div class=\"grid2\">");
	mrr_charts(&h, months, cur);
	tier_status_chart(&h, snap);
	quota_chart(&h, jsonget_array(report, "quotaUtilisation"));
	html_raw(&h, "</div>");
	months_table(&h, months, cur);
	json_object_put(report);
	return page_send(&h, 200);
}

/* --- customer search ------------------------------------------------------------ */

/* term as the start of a LIKE pattern: \ % _ escaped (the default ESCAPE '\'), then %. */
static char *
like_prefix(const char *term)
{
	struct buf b = BUF_INIT(4 * LIMIT_ADMIN_SEARCH_TERM + 2);
	const char *p;

	for (p = term; *p; p++)
		if (((*p == '\\' || *p == '%' || *p == '_') && buf_addch(&b, '\\') == -1) ||
		    buf_addch(&b, *p) == -1)
			response_fatal("search term too long");
	if (buf_addch(&b, '%') == -1)
		response_fatal("search term too long");
	return buf_detach(&b, NULL);
}

static const char sql_search[] =
    "WITH found AS ("
    " SELECT c.user_id FROM customers c WHERE c.user_id = $1 OR c.stripe_customer_id = $1"
    " UNION SELECT s.user_id FROM subscriptions s WHERE s.user_id IS NOT NULL"
    "  AND (s.user_id = $1 OR s.stripe_subscription_id = $1 OR s.stripe_customer_id = $1)"
    " UNION (SELECT u.user_id FROM usage_tracking u WHERE u.user_id = $1 LIMIT 1)"
    " UNION (SELECT c.user_id FROM customers c WHERE c.user_id LIKE $2"
    "  ORDER BY c.user_id LIMIT $3::integer)"
    " UNION (SELECT c.user_id FROM customers c WHERE lower(c.email) LIKE lower($2)"
    "  ORDER BY lower(c.email) LIMIT $3::integer))"
    " SELECT f.user_id, c.email, c.stripe_customer_id, l.stripe_subscription_id, l.tier,"
    "  l.status, user_effective_tier(f.user_id)"
    " FROM found f LEFT JOIN customers c ON c.user_id = f.user_id"
    " LEFT JOIN LATERAL user_live_subscription(f.user_id) l ON true"
    " ORDER BY f.user_id LIMIT $3::integer";

/* Subscriptions no user owns yet, found by their own or their customer's id. */
static const char sql_search_unlinked[] =
    "SELECT stripe_subscription_id, stripe_customer_id, tier, status FROM subscriptions"
    " WHERE user_id IS NULL AND (stripe_subscription_id = $1 OR stripe_customer_id = $1)"
    " ORDER BY id LIMIT $2::integer";

enum outcome
console_search(struct db *db, const char *operator, const char *term)
{
	struct html h = HTML_INIT;
	struct db_rows *rows = NULL, *unlinked = NULL;
	char *pattern = NULL, limit[16];
	enum db_result r;
	enum outcome rc = OUT_OK;
	int i, n;

	page_begin(&h, "Search", operator);
	html_raw(&h, "<h1>Customer search</h1><form class=\"filter\" method=\"get\" action=\"search\">"
	    "<input type=\"search\" name=\"q\" size=\"40\" value=\"");
	html_attr(&h, term);
	html_raw(&h, "\" placeholder=\"user id, e-mail, Stripe customer or subscription id\">"
	    "<button type=\"submit\">Search</button></form>");
	if (term == NULL || *term == '\0') {
		html_raw(&h, "<p class=\"muted\">Exact user ids, Stripe customer (cus_&hellip;) and"
		    " subscription (sub_&hellip;) ids; the start of a user id or an e-mail"
		    " address.</p>");
		return page_send(&h, 200);
	}
	snprintf(limit, sizeof(limit), "%d", LIMIT_ADMIN_ROWS);
	pattern = like_prefix(term);
	r = DB_QUERY(db, &rows, sql_search, term, pattern, limit);
	if (r == DB_OK)
		r = DB_QUERY(db, &unlinked, sql_search_unlinked, term, limit);
	if (r != DB_OK) {
		rc = db_outcome(r);
		goto out;
	}
	n = db_rows_count(rows);
	html_raw(&h, "<p id=\"count\">");
	html_int(&h, n);
	html_raw(&h, n == 1 ? " customer" : " customers");
	if (n >= LIMIT_ADMIN_ROWS)
		html_raw(&h, " (the first ones: narrow the search)");
	html_raw(&h, " for &ldquo;");
	html_txt(&h, term);
	html_raw(&h, "&rdquo;</p>");
	if (n > 0) {
		html_raw(&h, "<table id=\"results\"><tr><th>User</th><th>E-mail</th>"
		    "<th>Stripe customer</th><th>Subscription</th><th>Tier now</th></tr>");
		for (i = 0; i < n; i++) {
			html_raw(&h, "<tr><td>");
			customer_link(&h, db_rows_get(rows, i, 0));
			html_raw(&h, "</td>");
			td_txt(&h, db_rows_get(rows, i, 1));
			td_txt(&h, db_rows_get(rows, i, 2));
			html_raw(&h, "<td>");
			if (db_rows_get(rows, i, 3) != NULL) {
				html_txt(&h, db_rows_get(rows, i, 3));
				html_raw(&h, " <span class=\"muted\">");
				html_txt(&h, db_rows_get(rows, i, 4));
				html_raw(&h, " &middot; ");
				html_txt(&h, db_rows_get(rows, i, 5));
				html_raw(&h, "</span>");
			} else
				html_raw(&h, "<span class=\"muted\">none</span>");
			html_raw(&h, "</td>");
			td_txt(&h, db_rows_get(rows, i, 6));
			html_raw(&h, "</tr>");
		}
		html_raw(&h, "</table>");
	}
	if (db_rows_count(unlinked) > 0) {
		html_raw(&h, "<h2>Subscriptions not linked to a user</h2><table id=\"unlinked\">"
		    "<tr><th>Subscription</th><th>Stripe customer</th><th>Tier</th><th>Status</th></tr>");
		for (i = 0; i < db_rows_count(unlinked); i++) {
			html_raw(&h, "<tr>");
			td_txt(&h, db_rows_get(unlinked, i, 0));
			td_txt(&h, db_rows_get(unlinked, i, 1));
			td_txt(&h, db_rows_get(unlinked, i, 2));
			td_txt(&h, db_rows_get(unlinked, i, 3));
			html_raw(&h, "</tr>");
		}
		html_raw(&h, "</table><p class=\"muted\">The webhook links them when the checkout"
		    " that made them, or the customer, names a user.</p>");
	}
out:
	free(pattern);
	db_rows_free(rows);
	db_rows_free(unlinked);
	if (rc != OUT_OK) {
		html_free(&h);
		return rc;
	}
	return page_send(&h, 200);
}

/* --- the customer page ------------------------------------------------------------ */

static const char sql_customer[] =
    "SELECT c.stripe_customer_id, c.email, " UTC("c.created_at") ", user_effective_tier($1)"
    " FROM (SELECT 1) one LEFT JOIN customers c ON c.user_id = $1";

static const char sql_subscriptions[] =
    "SELECT stripe_subscription_id, stripe_customer_id, tier, status, billing_interval,"
    " price_id, unit_amount, currency, coalesce(quantity, 1),"
    " subscription_monthly_amount(status, unit_amount, quantity, billing_interval, currency),"
    " " UTC("trial_end") ", " UTC("current_period_end") ", cancel_at_period_end,"
    " " UTC("canceled_at") ", " UTC("ended_at") ", cancellation_reason,"
    " " UTC("last_event_created") ", last_event_id,"
    " status IN ('trialing', 'active', 'past_due')"
    " FROM subscriptions WHERE user_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2::integer";

static const char sql_usage_now[] =
    "SELECT usage_type, used, monthly_limit, remaining, to_char(period_start, 'YYYY-MM'), tier"
    " FROM user_usage($1)";

/* Past months, one row each, the five types as columns (billing_usage_types() order). */
static const char sql_usage_past[] =
    "SELECT to_char(period_start, 'YYYY-MM'),"
    " sum(amount) FILTER (WHERE usage_type = 'pain_entry'),"
    " sum(amount) FILTER (WHERE usage_type = 'mood_entry'),"
    " sum(amount) FILTER (WHERE usage_type = 'activity_log'),"
    " sum(amount) FILTER (WHERE usage_type = 'export'),"
    " sum(amount) FILTER (WHERE usage_type = 'storage')"
    " FROM usage_tracking WHERE user_id = $1 AND period_start < usage_period_start()"
    " GROUP BY period_start ORDER BY period_start DESC LIMIT 12";

/*
 * The user's events: by owner, and by the user's subscriptions (events from
 * before the customer was linked have no user).  Each branch is an index
 * scan; the newest LIMIT of their union are shown.
 */
static const char sql_events[] =
    "SELECT e.stripe_event_id, e.event_type, e.stripe_subscription_id, e.amount, e.currency,"
    " e.status, " UTC("e.occurred_at") ", e.processed_at IS NOT NULL,"
    " array_to_string(e.left_out, ', '),"
    " jsonb_pretty(nullif(e.payload #> '{data,object,metadata}', '{}'::jsonb))"
    " FROM billing_events e WHERE e.id IN ("
    "  SELECT b.id FROM billing_events b WHERE b.user_id = $1"
    "  UNION SELECT b.id FROM billing_events b WHERE b.stripe_subscription_id IN"
    "   (SELECT s.stripe_subscription_id FROM subscriptions s WHERE s.user_id = $1))"
    " ORDER BY e.id DESC LIMIT $2::integer";

static const char sql_notifications[] =
    "SELECT kind, status, attempts, " UTC("created_at") ", " UTC("sent_at") ","
    " " UTC("next_attempt_at") ", last_error, recipient, dedupe_key"
    " FROM notifications WHERE user_id = $1 ORDER BY id DESC LIMIT $2::integer";

static const char sql_movements[] =
    "SELECT " UTC("m.effective_at") ", m.stripe_subscription_id, m.kind, m.delta, m.currency,"
    " m.status_before, m.status, m.amount"
    " FROM mrr_movements m WHERE m.stripe_subscription_id IN"
    "  (SELECT s.stripe_subscription_id FROM subscriptions s WHERE s.user_id = $1)"
    " ORDER BY m.id DESC LIMIT $2::integer";

static const char sql_audit[] =
    "SELECT id, " UTC("created_at") ", operator, action,"
    " coalesce(stripe_subscription_id, usage_type), reason, result, detail->>'summary'"
    " FROM admin_audit WHERE user_id = $1 ORDER BY id DESC LIMIT $2::integer";

/* A link to the confirmation of action on user (and target). */
static void
action_link(struct html *h, enum admin_action a, const char *user, const char *target,
    int danger)
{
	html_raw(h, danger ? "<a class=\"button danger\" href=\"confirm?action=" :
			     "<a class=\"button\" href=\"confirm?action=");
	html_url_arg(h, admin_action_info(a)->name);
	html_raw(h, "&amp;user=");
	html_url_arg(h, user);
	if (target != NULL) {
		html_raw(h, "&amp;target=");
		html_url_arg(h, target);
	}
	html_raw(h, "\">");
	html_txt(h, admin_action_info(a)->label);
	html_raw(h, "</a> ");
}

static void
subscriptions_table(struct html *h, struct db_rows *rows, const char *user)
{
	int i, live, cape, ended;
	const char *status;

	html_raw(h, "<h2>Subscriptions</h2>");
	if (db_rows_count(rows) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p>");
		return;
	}
	html_raw(h, "<div class=\"scroll\"><table id=\"subscriptions\"><tr><th>Subscription</th>"
	    "<th>Tier</th><th>Status</th><th>Interval</th><th class=\"n\">Price</th>"
	    "<th class=\"n\">Seats</th><th class=\"n\">MRR</th><th>Trial end</th>"
	    "<th>Period end</th><th>Cancellation</th><th>Last event</th><th>Actions</th></tr>");
	for (i = 0; i < db_rows_count(rows); i++) {
		status = db_rows_get(rows, i, 3);
		live = strcmp(db_rows_get(rows, i, 18), "t") == 0;
		cape = strcmp(db_rows_get(rows, i, 12), "t") == 0;
		ended = strcmp(status, "canceled") == 0 || strcmp(status, "incomplete_expired") == 0;
		html_raw(h, "<tr data-subscription=\"");
		html_attr(h, db_rows_get(rows, i, 0));
		html_raw(h, "\">");
		td_txt(h, db_rows_get(rows, i, 0));
		td_txt(h, db_rows_get(rows, i, 2));
		html_raw(h, "<td data-col=\"status\">");
		html_txt(h, status);
		html_raw(h, "</td>");
		td_txt(h, db_rows_get(rows, i, 4));
		td_money(h, db_rows_get(rows, i, 6), db_rows_get(rows, i, 7));
		td_int(h, db_rows_get(rows, i, 8));
		td_money(h, db_rows_get(rows, i, 9), db_rows_get(rows, i, 7));
		td_txt(h, db_rows_get(rows, i, 10));
		td_txt(h, db_rows_get(rows, i, 11));
		html_raw(h, "<td data-col=\"cancellation\">");
		if (cape)
			html_raw(h, "at period end");
		if (db_rows_get(rows, i, 13) != NULL) {
			html_raw(h, cape ? "; canceled " : "canceled ");
			html_txt(h, db_rows_get(rows, i, 13));
		}
		if (db_rows_get(rows, i, 15) != NULL) {
			html_raw(h, " (");
			html_txt(h, db_rows_get(rows, i, 15));
			html_raw(h, ")");
		}
		html_raw(h, "</td><td>");
		html_txt(h, db_rows_get(rows, i, 16));
		html_raw(h, " <span class=\"muted\">");
		html_txt(h, db_rows_get(rows, i, 17));
		html_raw(h, "</span></td><td>");
		if (live && !cape)
			action_link(h, ADMIN_CANCEL_AT_PERIOD_END, user, db_rows_get(rows, i, 0), 0);
		if (live && cape)
			action_link(h, ADMIN_RESUME, user, db_rows_get(rows, i, 0), 0);
		if (!ended)
			action_link(h, ADMIN_CANCEL_NOW, user, db_rows_get(rows, i, 0), 1);
		html_raw(h, "</td></tr>");
	}
	html_raw(h, "</table></div>");
}

static void
usage_tables(struct html *h, struct db_rows *now, struct db_rows *past, const char *user)
{
	int i, j;
	const char *type;

	html_raw(h, "<div class=\"grid2\"><div><h2>Usage this month");
	if (db_rows_count(now) > 0) {
		html_raw(h, " (");
		html_txt(h, db_rows_get(now, 0, 4));
		html_raw(h, ", tier ");
		html_txt(h, db_rows_get(now, 0, 5));
		html_raw(h, ")");
	}
	html_raw(h, "</h2><table id=\"usage\"><tr><th>Type</th><th class=\"n\">Used</th>"
	    "<th class=\"n\">Limit</th><th class=\"n\">Remaining</th><th></th></tr>");
	for (i = 0; i < db_rows_count(now); i++) {
		type = db_rows_get(now, i, 0);
		html_raw(h, "<tr data-usage=\"");
		html_attr(h, type);
		html_raw(h, "\">");
		td_txt(h, type);
		td_usage(h, type, db_rows_get(now, i, 1));
		if (db_rows_get(now, i, 2) == NULL)
			html_raw(h, "<td class=\"n\">unlimited</td><td class=\"n\">&ndash;</td>");
		else {
			td_usage(h, type, db_rows_get(now, i, 2));
			td_usage(h, type, db_rows_get(now, i, 3));
		}
		html_raw(h, "<td>");
		if (strtoll(db_rows_get(now, i, 1), NULL, 10) > 0)
			action_link(h, ADMIN_RESET_USAGE, user, type, 0);
		html_raw(h, "</td></tr>");
	}
	html_raw(h, "</table></div><div><h2>Usage in past months</h2>");
	if (db_rows_count(past) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p></div></div>");
		return;
	}
	html_raw(h, "<table id=\"usage-past\"><tr><th>Month</th><th class=\"n\">pain_entry</th>"
	    "<th class=\"n\">mood_entry</th><th class=\"n\">activity_log</th>"
	    "<th class=\"n\">export</th><th class=\"n\">storage</th></tr>");
	for (i = 0; i < db_rows_count(past); i++) {
		html_raw(h, "<tr>");
		td_txt(h, db_rows_get(past, i, 0));
		for (j = 1; j <= 5; j++)
			td_usage(h, j == 5 ? "storage" : "", db_rows_get(past, i, j));
		html_raw(h, "</tr>");
	}
	html_raw(h, "</table></div></div>");
}

static void
events_table(struct html *h, struct db_rows *rows)
{
	int i;

	html_raw(h, "<h2>Billing events</h2>");
	if (db_rows_count(rows) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p>");
		return;
	}
	html_raw(h, "<div class=\"scroll\"><table id=\"events\"><tr><th>Time</th><th>Type</th>"
	    "<th>Event</th><th>Subscription</th><th class=\"n\">Amount</th><th>Status</th>"
	    "<th>Applied</th><th>Metadata</th></tr>");
	for (i = 0; i < db_rows_count(rows); i++) {
		html_raw(h, "<tr>");
		td_txt(h, db_rows_get(rows, i, 6));
		td_txt(h, db_rows_get(rows, i, 1));
		td_txt(h, db_rows_get(rows, i, 0));
		td_txt(h, db_rows_get(rows, i, 2));
		td_money(h, db_rows_get(rows, i, 3), db_rows_get(rows, i, 4));
		td_txt(h, db_rows_get(rows, i, 5));
		html_raw(h, "<td>");
		html_raw(h, strcmp(db_rows_get(rows, i, 7), "t") == 0 ? "yes" : "<b>no</b>");
		if (db_rows_get(rows, i, 8) != NULL && *db_rows_get(rows, i, 8) != '\0') {
			html_raw(h, " <span class=\"muted\">left out: ");
			html_txt(h, db_rows_get(rows, i, 8));
			html_raw(h, "</span>");
		}
		html_raw(h, "</td><td>");
		/* Stripe metadata is whatever the integration (or an attacker) put there. */
		if (db_rows_get(rows, i, 9) != NULL) {
			html_raw(h, "<details><summary>metadata</summary><pre>");
			html_txt(h, db_rows_get(rows, i, 9));
			html_raw(h, "</pre></details>");
		}
		html_raw(h, "</td></tr>");
	}
	html_raw(h, "</table></div>");
}

static void
notifications_table(struct html *h, struct db_rows *rows)
{
	int i;

	html_raw(h, "<h2>Notifications</h2>");
	if (db_rows_count(rows) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p>");
		return;
	}
	html_raw(h, "<div class=\"scroll\"><table id=\"notifications\"><tr><th>Queued</th>"
	    "<th>Kind</th><th>Delivery</th><th class=\"n\">Attempts</th><th>Sent</th>"
	    "<th>Next attempt</th><th>To</th><th>Last error</th></tr>");
	for (i = 0; i < db_rows_count(rows); i++) {
		html_raw(h, "<tr>");
		td_txt(h, db_rows_get(rows, i, 3));
		td_txt(h, db_rows_get(rows, i, 0));
		html_raw(h, "<td data-col=\"status\">");
		html_txt(h, db_rows_get(rows, i, 1));
		html_raw(h, "</td>");
		td_int(h, db_rows_get(rows, i, 2));
		td_txt(h, db_rows_get(rows, i, 4));
		td_txt(h, strcmp(db_rows_get(rows, i, 1), "pending") == 0 ? db_rows_get(rows, i, 5)
									  : NULL);
		td_txt(h, db_rows_get(rows, i, 7));
		if (db_rows_get(rows, i, 6) != NULL)
			td_wrap(h, db_rows_get(rows, i, 6));
		else
			td_txt(h, NULL);
		html_raw(h, "</tr>");
	}
	html_raw(h, "</table></div>");
}

static void
movements_table(struct html *h, struct db_rows *rows)
{
	int i;

	html_raw(h, "<h2>MRR movements</h2>");
	if (db_rows_count(rows) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p>");
		return;
	}
	html_raw(h, "<div class=\"scroll\"><table id=\"movements\"><tr><th>Effective</th>"
	    "<th>Subscription</th><th>Kind</th><th class=\"n\">Change</th>"
	    "<th class=\"n\">Subscription MRR after</th><th>Status</th></tr>");
	for (i = 0; i < db_rows_count(rows); i++) {
		html_raw(h, "<tr>");
		td_txt(h, db_rows_get(rows, i, 0));
		td_txt(h, db_rows_get(rows, i, 1));
		td_txt(h, db_rows_get(rows, i, 2) ? db_rows_get(rows, i, 2) : "status only");
		td_money(h, db_rows_get(rows, i, 3), db_rows_get(rows, i, 4));
		td_money(h, db_rows_get(rows, i, 7), db_rows_get(rows, i, 4));
		html_raw(h, "<td>");
		html_txt(h, db_rows_get(rows, i, 5) ? db_rows_get(rows, i, 5) : "(new)");
		html_raw(h, " &rarr; ");
		html_txt(h, db_rows_get(rows, i, 6) ? db_rows_get(rows, i, 6) : "(deleted)");
		html_raw(h, "</td></tr>");
	}
	html_raw(h, "</table></div>");
}

static void
audit_table(struct html *h, struct db_rows *rows)
{
	int i;

	html_raw(h, "<h2>Console actions</h2>");
	if (db_rows_count(rows) == 0) {
		html_raw(h, "<p class=\"muted\">None.</p>");
		return;
	}
	html_raw(h, "<div class=\"scroll\"><table id=\"audit\"><tr><th class=\"n\">#</th>"
	    "<th>When</th><th>Operator</th><th>Action</th><th>On</th><th>Why</th>"
	    "<th>Result</th></tr>");
	for (i = 0; i < db_rows_count(rows); i++) {
		html_raw(h, "<tr>");
		td_int(h, db_rows_get(rows, i, 0));
		td_txt(h, db_rows_get(rows, i, 1));
		td_txt(h, db_rows_get(rows, i, 2));
		td_txt(h, db_rows_get(rows, i, 3));
		td_txt(h, db_rows_get(rows, i, 4));
		td_wrap(h, db_rows_get(rows, i, 5));
		html_raw(h, "<td class=\"wrap\">");
		html_txt(h, db_rows_get(rows, i, 6));
		if (db_rows_get(rows, i, 7) != NULL) {
			html_raw(h, ": ");
			html_txt(h, db_rows_get(rows, i, 7));
		}
		html_raw(h, "</td></tr>");
	}
	html_raw(h, "</table></div>");
}

enum outcome
console_customer(struct db *db, const char *operator, const char *user)
{
	enum { CUSTOMER, SUBS, USAGE_NOW, USAGE_PAST, EVENTS, NOTES, MOVES, AUDIT, NQ };
	static const char *const sql[NQ] = { sql_customer, sql_subscriptions, sql_usage_now,
		sql_usage_past, sql_events, sql_notifications, sql_movements, sql_audit };
	struct db_rows *rows[NQ] = { NULL };
	struct html h = HTML_INIT;
	char limit[16];
	enum db_result r = DB_OK;
	enum outcome rc = OUT_OK;
	int q, known;

	snprintf(limit, sizeof(limit), "%d", LIMIT_ADMIN_ROWS);
	/* Read-only and consistent: one transaction for every table of the page. */
	if (db_begin(db) != DB_OK)
		return OUT_UNAVAILABLE;
	for (q = 0; q < NQ && r == DB_OK; q++)
		r = q == CUSTOMER || q == USAGE_NOW || q == USAGE_PAST
		    ? DB_QUERY(db, &rows[q], sql[q], user)
		    : DB_QUERY(db, &rows[q], sql[q], user, limit);
	if (r == DB_OK)
		r = db_commit(db);
	if (r != DB_OK) {
		db_rollback(db);
		rc = db_outcome(r);
		goto out;
	}
	known = db_rows_get(rows[CUSTOMER], 0, 0) != NULL || db_rows_count(rows[SUBS]) > 0 ||
	    db_rows_count(rows[USAGE_PAST]) > 0 || db_rows_count(rows[EVENTS]) > 0 ||
	    db_rows_count(rows[NOTES]) > 0 || db_rows_count(rows[AUDIT]) > 0;
	for (q = 0; q < db_rows_count(rows[USAGE_NOW]) && !known; q++)
		known = strcmp(db_rows_get(rows[USAGE_NOW], q, 1), "0") != 0;
	if (!known) {
		rc = OUT_NOT_FOUND;
		goto out;
	}
	page_begin(&h, user, operator);
	html_raw(&h, "<h1>Customer ");
	html_txt(&h, user);
	html_raw(&h, "</h1><div class=\"panel\"><dl id=\"customer\"><dt>User id</dt><dd>");
	html_txt(&h, user);
	html_raw(&h, "</dd><dt>E-mail</dt><dd data-col=\"email\">");
	html_txt(&h, db_rows_get(rows[CUSTOMER], 0, 1) ? db_rows_get(rows[CUSTOMER], 0, 1) : "none");
	html_raw(&h, "</dd><dt>Stripe customer</dt><dd>");
	html_txt(&h, db_rows_get(rows[CUSTOMER], 0, 0) ? db_rows_get(rows[CUSTOMER], 0, 0)
						      : "none (not linked)");
	if (db_rows_get(rows[CUSTOMER], 0, 2) != NULL) {
		html_raw(&h, " <span class=\"muted\">since ");
		html_txt(&h, db_rows_get(rows[CUSTOMER], 0, 2));
		html_raw(&h, "</span>");
	}
	html_raw(&h, "</dd><dt>Tier now</dt><dd data-col=\"tier\">");
	html_txt(&h, db_rows_get(rows[CUSTOMER], 0, 3));
	html_raw(&h, "</dd></dl>");
	if (db_rows_get(rows[CUSTOMER], 0, 0) != NULL) {
		html_raw(&h, "<p>");
		action_link(&h, ADMIN_RESYNC, user, NULL, 0);
		html_raw(&h, "</p>");
	}
	html_raw(&h, "</div>");
	subscriptions_table(&h, rows[SUBS], user);
	usage_tables(&h, rows[USAGE_NOW], rows[USAGE_PAST], user);
	events_table(&h, rows[EVENTS]);
	notifications_table(&h, rows[NOTES]);
	movements_table(&h, rows[MOVES]);
	audit_table(&h, rows[AUDIT]);
out:
	for (q = 0; q < NQ; q++)
		db_rows_free(rows[q]);
	if (rc != OUT_OK) {
		html_free(&h);
		return rc;
	}
	return page_send(&h, 200);
}

/* --- confirmation and result --------------------------------------------------------- */

/* The state an action would change, as the confirmation shows it. */
static enum outcome
current_state(struct db *db, struct html *h, enum admin_action a, const char *user,
    const char *target)
{
	const struct admin_action_info *info = admin_action_info(a);
	struct db_rows *rows = NULL;
	enum db_result r;

	if (info->target == ADMIN_TARGET_SUBSCRIPTION) {
		r = DB_QUERY(db, &rows, "SELECT tier, status, cancel_at_period_end, "
		    UTC("current_period_end") " FROM subscriptions"
		    " WHERE stripe_subscription_id = $1 AND user_id = $2", target, user);
		if (r == DB_OK && db_rows_count(rows) == 1) {
			html_raw(h, "<dl><dt>Subscription</dt><dd>");
			html_txt(h, target);
			html_raw(h, "</dd><dt>Tier</dt><dd>");
			html_txt(h, db_rows_get(rows, 0, 0));
			html_raw(h, "</dd><dt>Status</dt><dd>");
			html_txt(h, db_rows_get(rows, 0, 1));
			html_raw(h, "</dd><dt>Cancels at period end</dt><dd>");
			html_raw(h, strcmp(db_rows_get(rows, 0, 2), "t") == 0 ? "yes" : "no");
			html_raw(h, "</dd><dt>Period ends</dt><dd>");
			html_txt(h, db_rows_get(rows, 0, 3) ? db_rows_get(rows, 0, 3) : "unknown");
			html_raw(h, "</dd></dl>");
		}
	} else if (info->target == ADMIN_TARGET_USAGE_TYPE) {
		r = DB_QUERY(db, &rows, "SELECT used, monthly_limit, to_char(period_start, 'YYYY-MM')"
		    " FROM user_usage($1) WHERE usage_type = $2", user, target);
		if (r == DB_OK && db_rows_count(rows) == 1) {
			html_raw(h, "<dl><dt>Usage type</dt><dd>");
			html_txt(h, target);
			html_raw(h, "</dd><dt>Month</dt><dd>");
			html_txt(h, db_rows_get(rows, 0, 2));
			html_raw(h, "</dd><dt>Used</dt><dd>");
			html_int(h, strtoll(db_rows_get(rows, 0, 0), NULL, 10));
			html_raw(h, "</dd><dt>Limit</dt><dd>");
			if (db_rows_get(rows, 0, 1))
				html_int(h, strtoll(db_rows_get(rows, 0, 1), NULL, 10));
			else
				html_raw(h, "unlimited");
			html_raw(h, "</dd></dl>");
		}
	} else {
		r = DB_QUERY(db, &rows, "SELECT stripe_customer_id FROM customers WHERE user_id = $1",
		    user);
		if (r == DB_OK && db_rows_count(rows) == 1) {
			html_raw(h, "<dl><dt>Stripe customer</dt><dd>");
			html_txt(h, db_rows_get(rows, 0, 0));
			html_raw(h, "</dd></dl>");
		}
	}
	if (r == DB_OK && db_rows_count(rows) != 1) {
		db_rows_free(rows);
		return OUT_NOT_FOUND;
	}
	db_rows_free(rows);
	return r == DB_OK ? OUT_OK : db_outcome(r);
}

enum outcome
console_confirm(struct db *db, const char *operator, enum admin_action a, const char *user,
    const char *target)
{
	const struct admin_action_info *info = admin_action_info(a);
	struct html h = HTML_INIT;
	char *binding = admin_form_binding(a, user, target), *token = NULL;
	enum outcome rc;

	if ((rc = auth_form_token(operator, binding, time(NULL), &token)) != OUT_OK)
		goto out;
	page_begin(&h, info->label, operator);
	html_raw(&h, "<h1>");
	html_txt(&h, info->label);
	html_raw(&h, info->target == ADMIN_TARGET_USAGE_TYPE ? " usage counter" : "");
	html_raw(&h, ": ");
	html_txt(&h, user);
	html_raw(&h, "</h1><div class=\"panel\"><p>");
	html_txt(&h, info->effect);
	html_raw(&h, "</p>");
	if ((rc = current_state(db, &h, a, user, target)) != OUT_OK)
		goto out;
	html_raw(&h, "<form method=\"post\" action=\"action\" id=\"confirm\">"
	    "<input type=\"hidden\" name=\"action\" value=\"");
	html_attr(&h, info->name);
	html_raw(&h, "\"><input type=\"hidden\" name=\"user\" value=\"");
	html_attr(&h, user);
	html_raw(&h, "\">");
	if (target != NULL) {
		html_raw(&h, "<input type=\"hidden\" name=\"target\" value=\"");
		html_attr(&h, target);
		html_raw(&h, "\">");
	}
	html_raw(&h, "<input type=\"hidden\" name=\"token\" value=\"");
	html_attr(&h, token);
	html_rawf(&h, "\"><p><label>Why (recorded with your name) <br><input class=\"reason\""
	    " type=\"text\" name=\"reason\" required maxlength=\"%d\" autocomplete=\"off\">"
	    "</label></p><p><button type=\"submit\" class=\"%s\">", LIMIT_ADMIN_REASON,
	    a == ADMIN_CANCEL_NOW ? "danger" : "");
	html_txt(&h, info->label);
	html_raw(&h, "</button> <a href=\"customer?user=");
	html_url_arg(&h, user);
	html_rawf(&h, "\">Back</a></p><p class=\"muted\">This form is valid for %d minutes.</p>"
	    "</form></div>", LIMIT_ADMIN_FORM_SECONDS / 60);
out:
	free(binding);
	free(token);
	if (rc != OUT_OK) {
		html_free(&h);
		return rc;
	}
	return page_send(&h, 200);
}

enum outcome
console_result(const char *operator, enum admin_action a, const char *user, enum outcome rc,
    const struct admin_done *done)
{
	struct html h = HTML_INIT;

	page_begin(&h, admin_action_info(a)->label, operator);
	html_raw(&h, "<h1>");
	html_txt(&h, admin_action_info(a)->label);
	html_raw(&h, ": ");
	html_txt(&h, user);
	html_raw(&h, rc == OUT_OK ? "</h1><div class=\"msg ok\" id=\"result\">"
				  : "</h1><div class=\"msg err\" id=\"result\">");
	html_txt(&h, done->summary ? done->summary : outcome_message(rc));
	if (done->audit_id > 0)
		html_rawf(&h, " <span class=\"muted\">(audit #%lld)</span>", done->audit_id);
	html_raw(&h, "</div><p><a class=\"button\" href=\"customer?user=");
	html_url_arg(&h, user);
	html_raw(&h, "\">Back to the customer</a></p>");
	return page_send(&h, rc == OUT_OK ? 200 : outcome_status(rc));
}
