<?php
// Verify a beanmail delivery event (Standard Webhooks: webhook-id, webhook-timestamp,
// webhook-signature = "v1,base64(HMAC-SHA256(key, id.timestamp.body))") with PHP's own functions.
//
// In an application:
//   $event = beanmail_verify_event(file_get_contents('php://input'), getallheaders(), getenv('BEANMAIL_EVENTS_SECRET'));
//   if ($event['type'] === 'message.bounced') { ... $event['data']['recipient'] ... }
// Answer 2xx once handled; anything else and beanmail delivers it again later (keep the webhook-id
// of each event handled and ignore one seen before).

function beanmail_verify_event(string $body, array $headers, string $secret, int $tolerance = 300): array
{
    $h = array_change_key_case($headers, CASE_LOWER);
    $id = $h['webhook-id'] ?? '';
    $timestamp = $h['webhook-timestamp'] ?? '';
    $signatures = $h['webhook-signature'] ?? '';
    if ($id === '' || !ctype_digit($timestamp) || $signatures === '') {
        throw new RuntimeException('missing webhook-id, webhook-timestamp or webhook-signature');
    }
    if (abs(time() - (int) $timestamp) > $tolerance) {
        throw new RuntimeException('webhook-timestamp too far from now');
    }
    $key = base64_decode(substr($secret, strlen('whsec_')), true);
    $expected = base64_encode(hash_hmac('sha256', "$id.$timestamp.$body", $key, true));
    foreach (explode(' ', $signatures) as $signature) {
        [$version, $value] = array_pad(explode(',', $signature, 2), 2, '');
        if ($version === 'v1' && hash_equals($expected, $value)) {
            return json_decode($body, true, 512, JSON_THROW_ON_ERROR);
        }
    }
    throw new RuntimeException('no signature matches');
}

// From the command line (the tests): the body on stdin, the headers as a JSON object and the secret as arguments.
if (PHP_SAPI === 'cli' && isset($argv[0]) && realpath($argv[0]) === __FILE__) {
    try {
        $event = beanmail_verify_event(stream_get_contents(STDIN), json_decode($argv[1], true), $argv[2]);
        echo $event['type'], ' ', $event['data']['recipient'], "\n";
    } catch (Throwable $e) {
        fwrite(STDERR, 'refused: ' . $e->getMessage() . "\n");
        exit(1);
    }
}
