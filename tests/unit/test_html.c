/*
 * lib/html and lib/chart: escaping of text, attributes and URL arguments
 * (the console's defence against markup in user ids, e-mail addresses,
 * Stripe metadata and search terms), number formats, the page ceiling,
 * and charts that stay well-formed and escape their labels.
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "chart.h"
#include "html.h"
#include "tap.h"

static char *
txt(void (*fn)(struct html *, const char *), const char *s)
{
	struct html h = HTML_INIT;
	char *out;

	fn(&h, s);
	out = strdup(buf_str(&h.b));
	html_free(&h);
	return out;
}

static void
check(void (*fn)(struct html *, const char *), const char *in, const char *want,
    const char *name)
{
	char *got = txt(fn, in);

	is_str(got, want, "%s", name);
	free(got);
}

/* Counts occurrences of needle in hay. */
static int
count(const char *hay, const char *needle)
{
	int n = 0;

	for (; (hay = strstr(hay, needle)) != NULL; hay += strlen(needle))
		n++;
	return n;
}

int
main(void)
{
	struct html h = HTML_INIT;
	struct buf b = BUF_INIT(8);
	const char *labels[3] = { "2026-01", "<b>x</b>", "2026-03" };
	double v1[3] = { 100, -50, 2000 }, v2[3] = { 10, NAN, 0.5 };
	struct chart_series s[2] = { { "new & \"old\"", "c1", v1 }, { "<script>", "c2", v2 } };
	struct chart c = { "t<i>tle", labels, 3, s, 2, CHART_MONEY, "usd" };
	double lo, hi, step;
	const char *page;

	check(html_txt, "<script>alert('x')</script>&\"",
	    "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&amp;&quot;", "text: markup escaped");
	check(html_attr, "\" onmouseover=\"x", "&quot; onmouseover=&quot;x",
	    "attribute: quotes escaped");
	check(html_txt, "a\x01" "b\tc\nd\x7f", "a\xEF\xBF\xBD" "b\tc\nd\xEF\xBF\xBD",
	    "text: control characters become U+FFFD, tab and LF stay");
	check(html_txt, "caf\xC3\xA9 \xE2\x82\xAC", "caf\xC3\xA9 \xE2\x82\xAC", "text: UTF-8 kept");
	check(html_txt, NULL, "", "text: NULL is nothing");
	check(html_url_arg, "a b&c=d/\xC3\xA9\"<>'~._-", "a%20b%26c%3Dd%2F%C3%A9%22%3C%3E%27~._-",
	    "URL argument: all but unreserved percent-encoded");
	check(html_url_arg, "javascript:alert(1)", "javascript%3Aalert%281%29",
	    "URL argument: cannot become a scheme");

	html_int(&h, 1234567);
	html_raw(&h, "|");
	html_int(&h, -1000);
	html_raw(&h, "|");
	html_int(&h, 999);
	html_raw(&h, "|");
	html_money(&h, 123456, "usd");
	html_raw(&h, "|");
	html_money(&h, -5, "eur");
	html_raw(&h, "|");
	html_money(&h, 1500, "JPY");
	html_raw(&h, "|");
	html_percent(&h, 0.0512, 1);
	html_raw(&h, "|");
	html_percent(&h, NAN, 1);
	is_str(buf_str(&h.b), "1,234,567|-1,000|999|1,234.56&nbsp;USD|-0.05&nbsp;EUR|"
	    "1,500&nbsp;JPY|5.1&nbsp;%|&ndash;", "numbers, money and percentages");
	html_free(&h);

	ok(html_escape(&b, "<<<") == -1, "html_escape: a full buffer is an error, not a cut");
	buf_free(&b);

	{
		struct html big = { BUF_INIT(16), 0 };

		html_raw(&big, "0123456789");
		html_txt(&big, "0123456789");
		ok(html_failed(&big), "a page over its ceiling is marked failed");
		html_raw(&big, "x");
		ok(big.b.len <= 16, "and nothing more is appended");
		html_free(&big);
	}

	lo = -120;
	hi = 1870;
	chart_axis(&lo, &hi, 4, &step);
	ok(step == 500 && lo == -500 && hi == 2000, "axis: 1-2-5 steps around the range (%g..%g by %g)",
	    lo, hi, step);
	lo = hi = 0;
	chart_axis(&lo, &hi, 4, &step);
	ok(hi > lo && step > 0, "axis: an all-zero range still has a height");

	h = (struct html)HTML_INIT;
	chart_columns(&h, &c);
	chart_lines(&h, &c);
	chart_bars(&h, &c, 0);
	page = buf_str(&h.b);
	ok(!html_failed(&h), "charts drawn");
	ok(strstr(page, "<b>") == NULL && strstr(page, "<script>") == NULL &&
	    strstr(page, "<i>") == NULL, "chart labels, series names and titles are escaped");
	ok(strstr(page, "&lt;b&gt;x&lt;/b&gt;") != NULL, "the escaped label is there");
	is_int(count(page, "<svg"), 3, "three svg elements");
	is_int(count(page, "<svg"), count(page, "</svg>"), "every svg closed");
	is_int(count(page, "<rect"), count(page, "</rect>") + count(page, "class=\"track\""),
	    "every value rect closed (tracks close themselves)");
	is_int(count(page, "<title>"), count(page, "</title>"), "every tooltip closed");
	ok(strstr(page, "20.00&nbsp;USD") != NULL, "a tooltip: 2000 minor units is 20.00 USD");
	ok(strstr(page, "no value") == NULL, "a NAN is a gap in lines, not a tooltip");
	ok(strstr(page, "nan") == NULL && strstr(page, "inf") == NULL, "no NaN coordinates");
	html_free(&h);
	return done_testing();
}
