<?php
/**
 * The plugin's twin without WordPress: sends one client_webinar_completed event, built and
 * signed by the plugin's own code (webinar-flows-core.php), to a webinar-flows service, then
 * prints the final HTTP status and the answer's body. Plain php-cli: file_get_contents with a
 * stream context (no curl extension needed), hash and json (core).
 *
 *   WEBINAR_FLOWS_SECRET=whsec_... php send.php URL KEY_ID [LEAD_ID [WEBINAR_ID [SESSION_ID]]]
 *
 * URL and KEY_ID may also come from $WEBINAR_FLOWS_URL and $WEBINAR_FLOWS_KEY_ID; the secret
 * only from $WEBINAR_FLOWS_SECRET (an argument would show in `ps`). $WEBINAR_FLOWS_EVENT_ID
 * fixes the event id (default: a fresh UUID) and $WEBINAR_FLOWS_COMPLETED_AT the completion's
 * Unix time (default: now): with both, a second run sends the same bytes, as a plugin retry
 * does. $WEBINAR_FLOWS_ATTEMPTS (default 4) bounds the attempts. Retries follow the plugin's rules (no answer, 429, 503, other 5xx), with the same
 * event id and a fresh signature, but short waits (1, 2, 4 s, or Retry-After up to 10 s).
 *
 * Output: stdout "HTTP <status>" then the body; each retried attempt is noted on stderr.
 * Exit 0 on a 2xx, 1 otherwise, 2 on a usage error.
 */

require_once __DIR__ . '/webinar-flows-core.php';

function webinar_flows_twin_usage(string $message): void
{
    fwrite(STDERR, "send.php: $message\n"
        . "usage: WEBINAR_FLOWS_SECRET=whsec_... php send.php URL KEY_ID [LEAD_ID [WEBINAR_ID [SESSION_ID]]]\n");
    exit(2);
}

/** One POST; [status or null, body, Retry-After or null, error text]. */
function webinar_flows_twin_post(string $url, array $headers, string $body): array
{
    $lines = [];
    foreach ($headers as $name => $value) {
        $lines[] = "$name: $value";
    }
    $lines[] = 'Content-Length: ' . strlen($body);
    $lines[] = 'Connection: close';
    $context = stream_context_create(['http' => [
        'method' => 'POST',
        'header' => implode("\r\n", $lines),
        'content' => $body,
        'ignore_errors' => true,   // read the body of a 4xx/5xx too
        'follow_location' => 0,
        'timeout' => 15,
        'protocol_version' => 1.1,
    ]]);
    $http_response_header = null;
    $answer = @file_get_contents($url, false, $context);
    if ($answer === false || empty($http_response_header)) {
        $error = error_get_last();
        return [null, '', null, $error['message'] ?? 'no answer'];
    }
    // The last status line wins (a 100 Continue may come first).
    $status = null;
    $retry_after = null;
    foreach ($http_response_header as $line) {
        if (preg_match('#^HTTP/\S+\s+(\d{3})#', $line, $m)) {
            $status = (int) $m[1];
            $retry_after = null;
        } elseif (stripos($line, 'retry-after:') === 0) {
            $retry_after = trim(substr($line, strlen('retry-after:')));
        }
    }
    return [$status, $answer, $retry_after, ''];
}

$url = $argv[1] ?? getenv('WEBINAR_FLOWS_URL') ?: '';
$key_id = $argv[2] ?? getenv('WEBINAR_FLOWS_KEY_ID') ?: '';
$secret = getenv('WEBINAR_FLOWS_SECRET') ?: '';
if ($url === '' || $key_id === '') {
    webinar_flows_twin_usage('give the service URL and the key id');
}
if ($secret === '') {
    webinar_flows_twin_usage('set WEBINAR_FLOWS_SECRET to the key\'s whsec_ secret');
}
try {
    webinar_flows_secret_key($secret);
} catch (InvalidArgumentException $e) {
    webinar_flows_twin_usage($e->getMessage());
}

$event_id = getenv('WEBINAR_FLOWS_EVENT_ID') ?: null;
$completed_at = getenv('WEBINAR_FLOWS_COMPLETED_AT');
$completed_at = ($completed_at !== false && webinar_flows_is_seconds($completed_at)) ? (int) $completed_at : time();
$event = webinar_flows_completed_event(
    $argv[3] ?? 'lead-php-1', $argv[4] ?? 'webinar-php', 'live', $argv[5] ?? 'sess-php-1', $completed_at, $event_id);
try {
    $body = webinar_flows_body($event); // not UTF-8, or an id the signature cannot carry: a usage error
    webinar_flows_headers($secret, $event['id'], $body);
} catch (InvalidArgumentException $e) {
    webinar_flows_twin_usage($e->getMessage());
}
$target = webinar_flows_ingest_url($url, $key_id);
$attempts = max(1, (int) (getenv('WEBINAR_FLOWS_ATTEMPTS') ?: 4));
$short = [1, 2, 4, 8, 8, 8, 8, 8];

for ($attempt = 1; ; $attempt++) {
    [$status, $answer, $retry_after, $error] = webinar_flows_twin_post(
        $target, webinar_flows_headers($secret, $event['id'], $body), $body);
    $decision = webinar_flows_decide($status);
    $delay = $attempt < $attempts ? webinar_flows_retry_delay($attempt, null, $short) : null;
    if ($decision !== 'retry' || $delay === null) {
        break;
    }
    if (webinar_flows_is_seconds($retry_after)) {
        $delay = min(10, max($delay, (int) $retry_after));
    }
    fwrite(STDERR, 'attempt ' . $attempt . ': ' . ($status === null ? $error : "HTTP $status")
        . "; retrying in {$delay}s\n");
    sleep($delay);
}

echo 'HTTP ' . ($status === null ? '000 (' . $error . ')' : $status), "\n";
echo $answer, ($answer !== '' && substr($answer, -1) !== "\n") ? "\n" : '';
exit($decision === 'done' ? 0 : 1);
