<?php
/**
 * Plugin Name: Webinar Flows sender
 * Description: Sends client_webinar_completed CloudEvents to a webinar-flows service, signed with Standard Webhooks v1.
 * Version: 0.1.0
 * Requires PHP: 7.4
 *
 * Configuration, in wp-config.php (never in the database, never in git):
 *
 *     define('WEBINAR_FLOWS_URL', 'https://flows.example.com');   // the service's base URL
 *     define('WEBINAR_FLOWS_KEY_ID', 'site-17');                   // this site's key id
 *     define('WEBINAR_FLOWS_SECRET', 'whsec_...');                 // printed once by `webinar-flows keys new`
 *
 * Use: when a participation counts as completed, the tracker calls
 *
 *     webinar_flows_send_completed($lead_id, $webinar_id, 'live', $session_id, time());
 *
 * or fires the action do_action('webinar_flows_completed', $lead_id, $webinar_id, 'live', $session_id, time()).
 *
 * Delivery: the event is posted at once. A 2xx is done (the service committed the outcome:
 * accepted, duplicate or rejected). No answer (WP_Error: timeout, DNS, connection), 429, 503
 * or another 5xx is retried later through WP-Cron (wp_schedule_single_event), with the SAME
 * event, so the same CloudEvents id: the service dedupes a repeat as a duplicate. Each attempt
 * is signed afresh (new webhook-timestamp). Any other 4xx is final: it is logged and dropped,
 * since sending the same bytes again cannot succeed.
 */

if (!defined('ABSPATH')) {
    exit; // loaded by WordPress only
}

require_once __DIR__ . '/webinar-flows-core.php';

const WEBINAR_FLOWS_RETRY_HOOK = 'webinar_flows_retry';

/**
 * Build and send one client_webinar_completed event. Returns the event's id (keep it if the
 * tracker wants to correlate), or null when the plugin is not configured.
 */
function webinar_flows_send_completed(string $lead_id, string $webinar_id, string $webinar_type,
                                      string $session_id, int $completed_at): ?string
{
    if (!defined('WEBINAR_FLOWS_URL') || !defined('WEBINAR_FLOWS_KEY_ID') || !defined('WEBINAR_FLOWS_SECRET')) {
        error_log('webinar-flows: WEBINAR_FLOWS_URL, WEBINAR_FLOWS_KEY_ID and WEBINAR_FLOWS_SECRET must be defined in wp-config.php');
        return null;
    }
    $event = webinar_flows_completed_event($lead_id, $webinar_id, $webinar_type, $session_id, $completed_at,
                                           wp_generate_uuid4());
    webinar_flows_deliver($event, 1);
    return $event['id'];
}
add_action('webinar_flows_completed', 'webinar_flows_send_completed', 10, 5);

/**
 * One delivery attempt of $event (attempts count from 1). Schedules the next attempt when the
 * answer says so; WP-Cron passes the same $event back, so the body and the id do not change.
 */
function webinar_flows_deliver(array $event, int $attempt = 1): void
{
    try {
        $body = webinar_flows_body($event); // the exact bytes signed and sent
        $headers = webinar_flows_headers(WEBINAR_FLOWS_SECRET, $event['id'], $body);
    } catch (InvalidArgumentException $e) {
        // a lead id that is not UTF-8, a secret that is not whsec_: never a fatal error in the page
        error_log('webinar-flows: cannot send event ' . $event['id'] . ': ' . $e->getMessage());
        return;
    }
    $response = wp_remote_post(webinar_flows_ingest_url(WEBINAR_FLOWS_URL, WEBINAR_FLOWS_KEY_ID), [
        'body' => $body,          // a string: an array would be form-encoded and break the signature
        'headers' => $headers,
        'timeout' => 15,
        'redirection' => 0,       // an answer is never a redirect to follow
        'blocking' => true,       // the answer decides whether to retry
        'data_format' => 'body',
    ]);

    if (is_wp_error($response)) {
        $status = null;
        $why = $response->get_error_message();
        $retry_after = null;
    } else {
        $status = (int) wp_remote_retrieve_response_code($response);
        $why = 'HTTP ' . $status;
        $retry_after = wp_remote_retrieve_header($response, 'retry-after');
        $retry_after = is_string($retry_after) && $retry_after !== '' ? $retry_after : null;
    }

    switch (webinar_flows_decide($status)) {
        case 'done':
            // {"results": [{"id": ..., "status": "accepted" | "duplicate" | "rejected", "reason": ...}]}
            $answer = json_decode(wp_remote_retrieve_body($response), true);
            $result = $answer['results'][0] ?? [];
            if (($result['status'] ?? '') === 'rejected') {
                error_log('webinar-flows: event ' . $event['id'] . ' rejected: ' . ($result['reason'] ?? 'unknown'));
            }
            return;
        case 'retry':
            $delay = webinar_flows_retry_delay($attempt, $retry_after);
            if ($delay === null) {
                error_log('webinar-flows: event ' . $event['id'] . ' given up after ' . $attempt . ' attempts (' . $why . ')');
                return;
            }
            wp_schedule_single_event(time() + $delay, WEBINAR_FLOWS_RETRY_HOOK, [$event, $attempt + 1]);
            return;
        default: // 'give_up': 400, 401, 413, 415, ...: the same request would fail again
            // the problem's title and reason only: its detail may quote the event's data
            $problem = json_decode((string) wp_remote_retrieve_body($response), true);
            error_log('webinar-flows: event ' . $event['id'] . ' refused (' . $why . ': '
                      . ($problem['title'] ?? '') . ' ' . ($problem['reason'] ?? '') . '), not retried');
            return;
    }
}
add_action(WEBINAR_FLOWS_RETRY_HOOK, 'webinar_flows_deliver', 10, 2);
