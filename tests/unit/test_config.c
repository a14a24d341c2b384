#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "config.h"
#include "tap.h"

static char path[] = "/tmp/billing-config-XXXXXX";

static void
write_file(const char *text)
{
	FILE *f = fopen(path, "w");

	fputs(text, f);
	fclose(f);
}

static char log_path[] = "/tmp/billing-config-log-XXXXXX";

/* Loads path's content as the settings file, capturing what config_load logs. */
static enum outcome
load(const char *text, char *logged, size_t size)
{
	int saved = dup(STDERR_FILENO), fd = open(log_path, O_RDWR | O_TRUNC);
	enum outcome rc;
	ssize_t n;

	write_file(text);
	config_reset();
	fflush(stderr);
	dup2(fd, STDERR_FILENO);
	rc = config_load();
	fflush(stderr);
	dup2(saved, STDERR_FILENO);
	close(saved);
	n = pread(fd, logged, size - 1, 0);
	logged[n > 0 ? n : 0] = '\0';
	close(fd);
	return rc;
}

/* The file format: comments, quotes and the entry cap (README "Settings file"). */
static void
file_format(void)
{
	char logged[1024], *text, *p;
	size_t i;

	setenv("BILLING_CONFIG", path, 1);
	ok(load("ALPHA=one # the first letter\nBETA=two\t# tab before the hash\n", logged,
		sizeof(logged)) == OUT_OK, "inline comments load");
	is_str(config_get("ALPHA"), "one", "inline comment after a blank is a comment");
	is_str(config_get("BETA"), "two", "inline comment after a tab is a comment");
	ok(load("ALPHA=a#b\nBETA=#x\nGAMMA= # only a comment\n", logged, sizeof(logged)) == OUT_OK,
	   "hash without a blank before it loads");
	is_str(config_get("ALPHA"), "a#b", "a # inside a word is text");
	is_str(config_get("BETA"), "#x", "a # right after = is text");
	is_str(config_get("GAMMA"), NULL, "blank then # right after = is an empty value");
	ok(load("ALPHA=\"x # y\" # note\nBETA='p#q'\nGAMMA=\"  padded  \"\n", logged,
		sizeof(logged)) == OUT_OK, "quoted values load");
	is_str(config_get("ALPHA"), "x # y", "a quoted value keeps its #, the comment after goes");
	is_str(config_get("BETA"), "p#q", "single quotes keep everything inside");
	is_str(config_get("GAMMA"), "  padded  ", "quoted blanks are kept");
	ok(load("ALPHA=\"open\n", logged, sizeof(logged)) == OUT_MISCONFIGURED &&
	       strstr(logged, "line 1 has an unterminated quote") != NULL,
	   "unterminated quote refused, by line");
	ok(load("ALPHA=ok\nBETA=\"a\"b\n", logged, sizeof(logged)) == OUT_MISCONFIGURED &&
	       strstr(logged, "line 2 has an unterminated quote or text after the closing quote"),
	   "text after a closing quote refused");
	ok(load("ALPHA=\"a\"# x\n", logged, sizeof(logged)) == OUT_MISCONFIGURED,
	   "a comment needs a blank before its #, after quotes too");

	/* 256 entries load; the 257th is named for what it is. */
	text = malloc(257 * 32);
	for (p = text, i = 0; i < 256; i++)
		p += sprintf(p, "K%zu=v\n", i);
	ok(load(text, logged, sizeof(logged)) == OUT_OK, "256 entries load");
	for (p = text, i = 0; i < 257; i++)
		p += sprintf(p, "# comment %zu\nK%zu=v\n", i, i);
	*p = '\0';
	ok(load(text, logged, sizeof(logged)) == OUT_MISCONFIGURED &&
	       strstr(logged, "line 514: too many entries (max 256)") != NULL &&
	       strstr(logged, "not KEY=VALUE") == NULL,
	   "the 257th entry: too many entries (max 256), on its line");
	if (strstr(logged, "too many") == NULL)
		printf("#   logged: %s", logged);
	free(text);
}

int
main(void)
{
	int fd = mkstemp(path);
	long n;
	int b = -1;

	close(fd);
	unsetenv("BILLING_CONFIG");
	unsetenv("ALPHA");
	unsetenv("BETA");
	ok(config_load() == OUT_OK, "no file is fine");
	is_str(config_get("ALPHA"), NULL, "unset is NULL");
	is_str(config_get_default("ALPHA", "dflt"), "dflt", "default");

	write_file("# comment\n\nALPHA=one\n  BETA = \"two words\" \nexport GAMMA='x'\nEMPTY=\n");
	setenv("BILLING_CONFIG", path, 1);
	config_reset();
	ok(config_load() == OUT_OK, "file loads");
	is_str(config_get("ALPHA"), "one", "plain value");
	is_str(config_get("BETA"), "two words", "quoted value, blanks trimmed");
	is_str(config_get("GAMMA"), "x", "export prefix and single quotes");
	is_str(config_get("EMPTY"), NULL, "empty value counts as unset");
	setenv("ALPHA", "from-env", 1);
	is_str(config_get("ALPHA"), "from-env", "environment wins over the file");
	setenv("ALPHA", "", 1);
	is_str(config_get("ALPHA"), "one", "empty environment value falls back to the file");

	write_file("ALPHA=1\nthis is not a setting\n");
	config_reset();
	ok(config_load() == OUT_MISCONFIGURED, "malformed line is misconfigured");
	is_str(config_get("BETA"), NULL, "nothing kept from a malformed file");

	write_file("lower=1\n");
	config_reset();
	ok(config_load() == OUT_MISCONFIGURED, "lowercase key rejected");

	setenv("BILLING_CONFIG", "/nonexistent/billing.conf", 1);
	config_reset();
	ok(config_load() == OUT_MISCONFIGURED, "missing file is misconfigured");

	unsetenv("BILLING_CONFIG");
	config_reset();
	ok(config_load() == OUT_OK, "reload without file");
	const char *v;
	ok(config_require("NOPE_NOT_SET", &v) == OUT_MISCONFIGURED && v == NULL, "require missing");
	setenv("NUM", "42", 1);
	ok(config_get_long("NUM", 7, 0, 100, &n) == OUT_OK && n == 42, "integer setting");
	ok(config_get_long("NUM_UNSET", 7, 0, 100, &n) == OUT_OK && n == 7, "integer default");
	setenv("NUM", "420", 1);
	ok(config_get_long("NUM", 7, 0, 100, &n) == OUT_MISCONFIGURED, "integer out of range");
	setenv("NUM", "4 2", 1);
	ok(config_get_long("NUM", 7, 0, 100, &n) == OUT_MISCONFIGURED, "integer with junk");
	setenv("NUM", "+4", 1);
	ok(config_get_long("NUM", 7, 0, 100, &n) == OUT_MISCONFIGURED, "integer with sign");

	close(mkstemp(log_path));
	file_format();
	unsetenv("BILLING_CONFIG");
	config_reset();

	setenv("HOSTS", " a.example , B.example,,c.example ", 1);
	ok(config_list_contains("HOSTS", "a.example", 9, 0), "list: first entry, trimmed");
	ok(config_list_contains("HOSTS", "b.example", 9, 1), "list: case-insensitive when asked");
	ok(!config_list_contains("HOSTS", "b.example", 9, 0), "list: exact by default");
	ok(!config_list_contains("HOSTS", "a.exampl", 8, 0), "list: no prefix match");
	ok(!config_list_contains("HOSTS", "", 0, 0), "list: empty item never matches");
	ok(!config_list_contains("UNSET_LIST", "a", 1, 0), "list: unset");
	unlink(path);
	unsetenv("FLAG");
	ok(config_get_bool("FLAG", 1, &b) == OUT_OK && b == 1, "bool: default when unset");
	setenv("FLAG", "false", 1);
	ok(config_get_bool("FLAG", 1, &b) == OUT_OK && b == 0, "bool: false");
	setenv("FLAG", "true", 1);
	ok(config_get_bool("FLAG", 0, &b) == OUT_OK && b == 1, "bool: true");
	setenv("FLAG", "yes", 1);
	ok(config_get_bool("FLAG", 0, &b) == OUT_MISCONFIGURED, "bool: anything else refused");
	unsetenv("FLAG");
	unlink(log_path);
	return done_testing();
}
