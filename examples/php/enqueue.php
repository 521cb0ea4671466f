<?php
// Enqueue a beanmail job from PHP with Pheanstalk, using only docs/envelope.md.
//   php examples/php/enqueue.php HOST PORT TEMPLATE ADDRESS NAME CONTEXT_JSON [SECRET]
// Prints the beanstalkd job id.

require_once '/usr/share/php/Pheanstalk/autoload.php';  // Debian's php-pda-pheanstalk

use Pheanstalk\Pheanstalk;

function canonical($value) {
    // keys sorted at every level, no white space, UTF-8 and '/' unescaped (docs/envelope.md)
    if (is_array($value)) {
        if (array_keys($value) !== range(0, count($value) - 1)) {
            ksort($value, SORT_STRING);
            $out = [];
            foreach ($value as $k => $v) {
                $out[] = json_encode((string)$k, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES) . ':' . canonical($v);
            }
            return '{' . implode(',', $out) . '}';
        }
        return '[' . implode(',', array_map('canonical', $value)) . ']';
    }
    if ($value instanceof stdClass) {
        return count((array)$value) ? canonical((array)$value) : '{}';
    }
    return json_encode($value, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES);
}

[$_, $host, $port, $template, $address, $name, $contextJson] = $argv;
$secret = $argv[7] ?? '';

$job = [
    'v' => 1,
    'kind' => 'mail',
    'id' => 'php:' . bin2hex(random_bytes(8)),
    'template' => $template,
    'to' => ['address' => $address, 'name' => $name],
    'context' => json_decode($contextJson, true) ?: new stdClass(),
    'priority' => 'urgent',
    'created_at' => time(),
];
if ($secret !== '') {
    $job['sig'] = hash_hmac('sha256', canonical($job), $secret);
}

$pheanstalk = Pheanstalk::create($host, (int)$port);
$pheanstalk->useTube('mail.urgent');
$put = $pheanstalk->put(json_encode($job, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES), 100, 0, 120);
echo $put->getId(), "\n";
