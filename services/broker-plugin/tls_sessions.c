/*
 * tls_sessions: the broker's TLS session policy for devices that come and go.
 *
 * A metered device checks in every few hours (issue 18) and resumes its TLS
 * session so that no certificate crosses the link. Two OpenSSL defaults that
 * mosquitto 2.0 keeps and has no option for stand in the way:
 *   - a session lives 7,200 s (SSL_CTX_set_timeout), so a check-in four hours
 *     after the last pays full handshakes;
 *   - TLS 1.3 tickets are stateless: the ticket carries the whole session,
 *     the client's certificate included, so it crosses the link twice per
 *     check-in (about 700 B each way).
 * mosquitto creates its listeners' SSL_CTX after loading plugins and gives
 * plugins no handle on them, so this file registers an SSL_CTX ex_data index
 * whose "new" callback OpenSSL runs inside every later SSL_CTX_new: there it
 * sets the lifetime and turns on stateful tickets (SSL_OP_NO_TICKET: in TLS 1.3
 * the ticket is then a session id into the broker's own cache), with one ticket
 * per handshake. mosquitto only adds options afterwards, and sets a session id
 * context per listener, which the cache needs.
 * A resumed session skips the certificate's verification; the identity
 * plugin's CONNECT check (CN, client id, CRL) still runs on every connection,
 * on the certificate the session holds. Alternatives: docs/decisions.md.
 */

#include <errno.h>
#include <stdlib.h>

#include <openssl/ssl.h>

#include <mosquitto.h>
#include <mosquitto_broker.h>

#include "tls_sessions.h"

/* RFC 8446 4.6.1: a ticket lifetime is at most seven days. */
#define MAX_LIFETIME 604800L

static long session_lifetime;
static int registered;

static void on_new_ctx(void *parent, void *ptr, CRYPTO_EX_DATA *ad, int idx, long argl, void *argp)
{
	SSL_CTX *ctx = parent;

	(void)ptr;
	(void)ad;
	(void)idx;
	(void)argl;
	(void)argp;
	SSL_CTX_set_timeout(ctx, session_lifetime);
	SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
	SSL_CTX_set_num_tickets(ctx, 1);
}

int tls_sessions_configure(const char *lifetime)
{
	char *end;
	long value;

	errno = 0;
	value = strtol(lifetime, &end, 10);
	if(errno || end == lifetime || *end || value < 1 || value > MAX_LIFETIME){
		mosquitto_log_printf(MOSQ_LOG_ERR,
				"twelvefactor_identity: plugin_opt_tls_session_lifetime \"%s\" is not a number of seconds from 1 to %ld",
				lifetime, MAX_LIFETIME);
		return -1;
	}
	/* per_listener_settings loads the plugin once per listener: the longest lifetime wins */
	if(value > session_lifetime){
		session_lifetime = value;
	}
	if(!registered){
		if(SSL_CTX_get_ex_new_index(0, NULL, on_new_ctx, NULL, NULL) < 0){
			mosquitto_log_printf(MOSQ_LOG_ERR, "twelvefactor_identity: OpenSSL refused an SSL_CTX ex_data index");
			return -1;
		}
		registered = 1;
	}
	return 0;
}
