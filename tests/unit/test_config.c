#include <stdio.h>
#include <stdlib.h>
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
	return done_testing();
}
