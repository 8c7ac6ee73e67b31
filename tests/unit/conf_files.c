/*
 * conf_files.c - see conf_files.h.
 */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <cmocka.h>

#include "tests/unit/conf_files.h"

/* A cmocka group setup: a new directory TMPDIR/TAG.XXXXXX for file. */
int conf_files_setup(void **state, const char *tag, const char *file)
{
	struct conf_files *f = calloc(1, sizeof(*f));
	const char *tmp = getenv("TMPDIR");
	if (f == NULL)
		return -1;
	snprintf(f->dir, sizeof(f->dir), "%s/%s.XXXXXX", tmp ? tmp : "/tmp", tag);
	if (mkdtemp(f->dir) == NULL) {
		free(f);
		return -1;
	}
	snprintf(f->path, sizeof(f->path), "%s/%s", f->dir, file);
	*state = f;
	return 0;
}

/* Removes the file and its directory. */
int conf_files_teardown(void **state)
{
	struct conf_files *f = *state;
	unlink(f->path);
	int rc = rmdir(f->dir);
	free(f);
	return rc;
}

void conf_files_write(const struct conf_files *f, const char *text)
{
	FILE *fp = fopen(f->path, "w");
	assert_non_null(fp);
	assert_true(fputs(text, fp) >= 0);
	assert_int_equal(fclose(fp), 0);
}

/*
 * A load of path (holding text) that returned rc with err must have
 * failed with one message, "PATH:LINE: " (or "PATH: " when line is 0)
 * followed by a reason containing fragment.
 */
void conf_expect_message(const char *path, const char *text, int line, const char *fragment, int rc,
			 const char *err)
{
	char prefix[CONF_ERR_MAX];
	if (line > 0)
		snprintf(prefix, sizeof(prefix), "%s:%d: ", path, line);
	else
		snprintf(prefix, sizeof(prefix), "%s: ", path);
	if (rc != -1 || strncmp(err, prefix, strlen(prefix)) != 0 || strstr(err, fragment) == NULL)
		fail_msg("config:\n%s\nwant: %s...%s...\ngot:  %s (rc %d)", text, prefix, fragment, err, rc);
	assert_null(strchr(err, '\n'));
	assert_null(strstr(err + strlen(prefix), path)); /* one message */
}
