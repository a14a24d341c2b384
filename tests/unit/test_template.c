/*
 * lib/template: the placeholder syntax, the start-up refusals (unknown
 * or malformed placeholders, bad text, missing files) and rendering with
 * and without HTML escaping.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#include "buf.h"
#include "limits.h"
#include "tap.h"
#include "template.h"

/* Index 2 exists in the vocabulary but is not offered to this template. */
static const char *const names[] = { "plan", "amount", NULL, "invoice_url" };
#define N (sizeof(names) / sizeof(names[0]))

static struct template *
parse(const char *text, char *err, size_t errlen)
{
	struct template *t = NULL;

	err[0] = '\0';
	if (template_parse(text, strlen(text), names, N, &t, err, errlen) == -1)
		return NULL;
	return t;
}

/* Renders text with values; the output, or NULL with *rc. */
static char *
render(const char *text, const char *const *values, enum template_escape esc, int *rc,
    const char **missing)
{
	struct template *t;
	struct buf out = BUF_INIT(1024);
	char err[256];
	size_t len;

	*rc = -9;
	if ((t = parse(text, err, sizeof(err))) == NULL)
		return NULL;
	*rc = template_render(t, values, esc, &out, missing);
	template_free(t);
	if (*rc != 0) {
		buf_free(&out);
		return NULL;
	}
	return buf_detach(&out, &len);
}

static void
test_refusals(void)
{
	static const struct {
		const char *text, *err;
	} cases[] = {
		{ "Hi {{plan_name}}", "line 1: unknown placeholder {{plan_name}}" },
		{ "a\nb\n{{ nope }} c", "line 3: unknown placeholder {{nope}}" },
		{ "hidden {{}}", "line 1: \"{{\" that is not a {{name}} placeholder" },
		{ "open {{plan", "line 1: \"{{\" that is not a {{name}} placeholder" },
		{ "\n{{Plan}}", "line 2: \"{{\" that is not a {{name}} placeholder" },
		{ "{{plan-name}}", "line 1: \"{{\" that is not a {{name}} placeholder" },
		{ "{{plan}", "line 1: \"{{\" that is not a {{name}} placeholder" },
		{ "bad \xc3 byte", "is not UTF-8 text (or holds control characters)" },
		{ "bell \a", "is not UTF-8 text (or holds control characters)" },
	};
	char err[256];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		struct template *t = parse(cases[i].text, err, sizeof(err));

		ok(t == NULL, "refused: case %zu", i);
		is_str(err, cases[i].err, "  says why");
		template_free(t);
	}
	/* A placeholder the vocabulary has but this template may not use is unknown here. */
	ok(parse("{{invoice_url}}", err, sizeof(err)) != NULL, "an offered name parses");
	ok(template_parse("x\0y", 3, names, N, &(struct template *){ NULL }, err, sizeof(err)) == -1,
	    "a NUL byte is refused");
}

static void
test_render(void)
{
	const char *values[N] = { "Pro", "15.00 USD", "never", "https://x.example/i?a=1&b=\"2\"" };
	const char *missing;
	char *out;
	int rc;
	struct template *t;
	char err[256];

	out = render("Plan {{plan}}, {{ amount }} at {{invoice_url}}\n\ttab", values, TEMPLATE_TEXT,
	    &rc, &missing);
	is_str(out, "Plan Pro, 15.00 USD at https://x.example/i?a=1&b=\"2\"\n\ttab",
	    "text: values as they are; tabs and line breaks of the template kept");
	free(out);
	out = render("<a href=\"{{invoice_url}}\">{{plan}}</a>", values, TEMPLATE_HTML, &rc,
	    &missing);
	is_str(out, "<a href=\"https://x.example/i?a=1&amp;b=&quot;2&quot;\">Pro</a>",
	    "html: values escaped, template markup not");
	free(out);
	values[0] = "<script>alert('x')</script> & co";
	out = render("{{plan}}", values, TEMPLATE_HTML, &rc, &missing);
	is_str(out, "&lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt; &amp; co", "html: & < > \" '");
	free(out);
	values[0] = "line\r\nbreak\x01";
	out = render("[{{plan}}]", values, TEMPLATE_TEXT, &rc, &missing);
	is_str(out, "[line  break ]", "control characters in values become blanks");
	free(out);
	values[1] = NULL;
	out = render("{{plan}} {{amount}}", values, TEMPLATE_TEXT, &rc, &missing);
	ok(out == NULL && rc == -1, "a used value that is missing: -1");
	is_str(missing, "amount", "  names the placeholder");
	out = render("{{plan}} only", values, TEMPLATE_TEXT, &rc, &missing);
	ok(out != NULL && rc == 0, "an unused missing value does not matter");
	free(out);
	t = parse("{{plan}}{{plan}}{{plan}}", err, sizeof(err));
	ok(t && template_uses(t, 0) && !template_uses(t, 1) && !template_uses(t, 9), "template_uses");
	{
		struct buf small = BUF_INIT(5);

		values[0] = "a long value";
		ok(template_render(t, values, TEMPLATE_TEXT, &small, &missing) == -2,
		    "output ceiling: -2");
		buf_free(&small);
	}
	template_free(t);
	template_free(NULL);
}

static void
test_load(void)
{
	char path[] = "/tmp/billing-template-XXXXXX", err[256];
	struct template *t = NULL;
	FILE *f;
	int fd = mkstemp(path);
	long i;

	ok(fd != -1, "temp file");
	f = fdopen(fd, "w");
	fputs("Subject: {{plan}}\n\nbody {{amount}}\n", f);
	fclose(f);
	ok(template_load(path, names, N, &t, err, sizeof(err)) == 0 && template_uses(t, 1),
	    "loads a file");
	template_free(t);
	f = fopen(path, "w");
	for (i = 0; i <= LIMIT_MAIL_TEMPLATE; i++)
		fputc('x', f);
	fclose(f);
	ok(template_load(path, names, N, &t, err, sizeof(err)) == -1, "a file over the limit");
	ok(strstr(err, "larger than") != NULL, "  says so: %s", err);
	unlink(path);
	ok(template_load(path, names, N, &t, err, sizeof(err)) == -1 &&
	    strstr(err, "cannot be opened") != NULL, "a missing file: %s", err);
}

static void
test_urls(void)
{
	static const struct {
		const char *url;
		int https, http;
	} cases[] = {
		{ "https://invoice.stripe.com/i/acct_1/test_x?s=ap&l=en", 1, 1 },
		{ "http://localhost:3000/account", 0, 1 },
		{ "javascript:alert(1)", 0, 0 },
		{ "https://x.example/\"onmouseover=\"x", 0, 0 },
		{ "https://x.example/<b>", 0, 0 },
		{ "https://x.example/a b", 0, 0 },
		{ "https://x.example/\xc3\xa9", 0, 0 },
		{ "HTTPS://x.example/", 0, 0 },
		{ "", 0, 0 },
	};
	char longurl[LIMIT_MAIL_VALUE + 2];
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++)
		ok(template_url_ok(cases[i].url, 1) == cases[i].https &&
		    template_url_ok(cases[i].url, 0) == cases[i].http, "href-safe URL: case %zu", i);
	ok(!template_url_ok(NULL, 0), "NULL is no URL");
	memcpy(longurl, "https://", 8);
	memset(longurl + 8, 'a', sizeof(longurl) - 9);
	longurl[sizeof(longurl) - 1] = '\0';
	ok(!template_url_ok(longurl, 1), "a URL over LIMIT_MAIL_VALUE is refused");
}

/*
 * template_parse takes len bytes, not a string: text that ends where
 * unreadable memory begins (no NUL after it) parses, and no byte past it
 * is read (a read there would end this test with SIGSEGV).
 */
static void
test_unterminated(void)
{
	static const char text[] = "Plan {{plan}}";
	long page = sysconf(_SC_PAGESIZE);
	char *map, *at, err[256];
	struct template *t = NULL;

	map = mmap(NULL, (size_t)page * 2, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1,
	    0);
	if (map == MAP_FAILED || mprotect(map + page, (size_t)page, PROT_NONE) != 0) {
		ok(0, "a guard page for the unterminated text");
		return;
	}
	at = map + page - (sizeof(text) - 1);
	memcpy(at, text, sizeof(text) - 1);
	ok(template_parse(at, sizeof(text) - 1, names, N, &t, err, sizeof(err)) == 0 && t != NULL,
	    "text without a NUL after it, at the end of readable memory, parses");
	template_free(t);
	munmap(map, (size_t)page * 2);
}

int
main(void)
{
	test_urls();
	test_refusals();
	test_render();
	test_load();
	test_unterminated();
	return done_testing();
}
