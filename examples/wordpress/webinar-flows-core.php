<?php
/**
 * Webinar Flows: the parts of the sender that need no WordPress.
 *
 * Building a CloudEvent, signing a request with Standard Webhooks v1 and deciding whether an
 * answer is retried. Plain PHP 7.4+ with only what every build has (hash, json, pcre): the
 * WordPress plugin (webinar-flows-sender.php) and the command-line twin (send.php) both use
 * this file, so the signing that CI checks against a running server is the plugin's own.
 *
 * Never log or print a secret, a signature or the event's data (a lead's personal data).
 */

if (!defined('WEBINAR_FLOWS_SOURCE')) {
    // The emitter this site speaks for: an emitter of the service's emitters.yaml, and the
    // emitter of this site's key in the service's keys file.
    define('WEBINAR_FLOWS_SOURCE', 'client-webinar-tracker-v2');
}

const WEBINAR_FLOWS_SECRET_PREFIX = 'whsec_';
// Standard Webhooks' recommended retry schedule (seconds after the previous attempt), cut
// short: after the last entry the event is given up and logged.
const WEBINAR_FLOWS_BACKOFF = [5, 300, 1800, 7200, 18000, 36000, 50400, 72000, 86400];

/** A random (version 4) UUID: the CloudEvents id. It holds no '.', as a webhook-id must not. */
function webinar_flows_uuid4(): string
{
    $b = random_bytes(16);
    $b[6] = chr((ord($b[6]) & 0x0f) | 0x40);
    $b[8] = chr((ord($b[8]) & 0x3f) | 0x80);
    return vsprintf('%s%s-%s-%s-%s-%s%s%s', str_split(bin2hex($b), 4));
}

/**
 * A client_webinar_completed CloudEvent (structured JSON form), as events.yaml describes it.
 * $completed_at is a Unix time; it is written as RFC 3339 UTC.
 */
function webinar_flows_completed_event(string $lead_id, string $webinar_id, string $webinar_type,
                                       string $session_id, int $completed_at, ?string $id = null): array
{
    $when = gmdate('Y-m-d\TH:i:s\Z', $completed_at);
    return [
        'specversion' => '1.0',
        'id' => $id ?? webinar_flows_uuid4(),
        'source' => WEBINAR_FLOWS_SOURCE,
        'type' => 'client_webinar_completed',
        'time' => $when,
        'datacontenttype' => 'application/json',
        'data' => [
            'lead_id' => $lead_id,
            'webinar_id' => $webinar_id,
            'webinar_type' => $webinar_type,   // "live" or "auto"
            'session_id' => $session_id,
            'completed_at' => $when,
        ],
    ];
}

/** The exact body bytes to send and sign (the signature covers these bytes, not the array). */
function webinar_flows_body(array $event): string
{
    $body = json_encode($event, JSON_UNESCAPED_SLASHES | JSON_UNESCAPED_UNICODE);
    if ($body === false) {
        throw new InvalidArgumentException('the event cannot be encoded as JSON: ' . json_last_error_msg());
    }
    return $body;
}

/** The HMAC key of a whsec_ secret: the base64-decoded part after the prefix. */
function webinar_flows_secret_key(string $secret): string
{
    $secret = trim($secret);
    if (strncmp($secret, WEBINAR_FLOWS_SECRET_PREFIX, strlen(WEBINAR_FLOWS_SECRET_PREFIX)) !== 0) {
        throw new InvalidArgumentException('the secret must start with whsec_');
    }
    $key = base64_decode(substr($secret, strlen(WEBINAR_FLOWS_SECRET_PREFIX)), true);
    if ($key === false || $key === '') {
        throw new InvalidArgumentException('the secret is not whsec_ followed by base64');
    }
    return $key;
}

/** Standard Webhooks v1: "v1," . base64(HMAC-SHA256(key, "{id}.{timestamp}.{body}")). */
function webinar_flows_sign(string $secret, string $msg_id, int $timestamp, string $body): string
{
    $mac = hash_hmac('sha256', $msg_id . '.' . $timestamp . '.' . $body, webinar_flows_secret_key($secret), true);
    return 'v1,' . base64_encode($mac);
}

/**
 * The request headers for one attempt. The webhook-id is the event's id (a UUID: no '.'),
 * the same on every retry; the timestamp is now, so each retry is signed afresh.
 */
function webinar_flows_headers(string $secret, string $event_id, string $body, ?int $now = null): array
{
    if ($event_id === '' || strpos($event_id, '.') !== false || strlen($event_id) > 255) {
        throw new InvalidArgumentException('a webhook-id is 1-255 characters without a "."');
    }
    $timestamp = $now ?? time();
    return [
        'Content-Type' => 'application/cloudevents+json',
        'webhook-id' => $event_id,
        'webhook-timestamp' => (string) $timestamp,
        'webhook-signature' => webinar_flows_sign($secret, $event_id, $timestamp, $body),
    ];
}

/** The ingestion URL of a key: {base}/v1/ingest/{key id}. */
function webinar_flows_ingest_url(string $base_url, string $key_id): string
{
    return rtrim($base_url, '/') . '/v1/ingest/' . rawurlencode($key_id);
}

/**
 * What to do with an answer: 'done' (2xx: the server committed an outcome, accepted,
 * duplicate or rejected), 'retry' (no answer, 429, 503 or another 5xx) or 'give_up' (any
 * other status: 400 bad envelope, 401 key or signature, 413 too large, 415 format; sending
 * the same bytes again cannot succeed). $status is null when there was no HTTP answer.
 */
function webinar_flows_decide(?int $status): string
{
    if ($status === null || $status === 429 || $status >= 500) {
        return 'retry';
    }
    if ($status >= 200 && $status < 300) {
        return 'done';
    }
    return 'give_up';
}

/**
 * Seconds to wait before attempt $attempt + 1 (attempts count from 1), or null when the
 * attempts are used up. A Retry-After in seconds from the server wins when it is longer.
 */
function webinar_flows_retry_delay(int $attempt, ?string $retry_after = null, ?array $schedule = null): ?int
{
    $schedule = $schedule ?? WEBINAR_FLOWS_BACKOFF;
    if ($attempt < 1 || $attempt > count($schedule)) {
        return null;
    }
    $delay = $schedule[$attempt - 1];
    if (webinar_flows_is_seconds($retry_after)) {
        $delay = max($delay, (int) trim($retry_after));
    }
    return $delay;
}

/**
 * Whether a header value is a whole number of seconds (Retry-After's delay-seconds form). With
 * pcre, which every PHP build has: ctype is an extension a host may leave out.
 */
function webinar_flows_is_seconds(?string $value): bool
{
    return $value !== null && preg_match('/^[0-9]+$/', trim($value)) === 1;
}
