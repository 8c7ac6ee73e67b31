/*
 * conf_files.h - what the configuration tests (test_config for the
 * proxy, test_migrate_config for the migrator) share: a private mkdtemp
 * directory with the file under test, and the check of a load error's
 * "FILE:LINE: reason" message.
 */
#ifndef CUTOVER_TESTS_CONF_FILES_H
#define CUTOVER_TESTS_CONF_FILES_H

#include <stddef.h>

#define CONF_ERR_MAX 512

struct conf_files {
	char dir[256];
	char path[300]; /* the file under test, in dir */
};

/* One bad configuration and what its error must say. */
struct error_case {
	const char *text;
	int line; /* 0: the message has no line */
	const char *fragment;
};

int conf_files_setup(void **state, const char *tag, const char *file);
int conf_files_teardown(void **state);
void conf_files_write(const struct conf_files *f, const char *text);
void conf_expect_message(const char *path, const char *text, int line, const char *fragment, int rc,
			 const char *err);

#endif
