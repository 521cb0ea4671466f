<?php
// Enqueue a beanmail job from PHP with Pheanstalk, using only docs/envelope.md.
//   php examples/php/enqueue.php HOST PORT TEMPLATE ADDRESS NAME CONTEXT_JSON [SECRET]
// Prints the beanstalkd job id. With SECRET (BEANMAIL_SECRET; "new,old" signs with "new") the
// job is signed.

require_once '/usr/share/php/Pheanstalk/autoload.php';  // Debian's php-pda-pheanstalk

use Pheanstalk\Pheanstalk;

// A job body (docs/envelope.md, "Signing"): the envelope's JSON text as json_encode writes it;
// signed, that exact text goes into the body unchanged with the HMAC of its bytes after it.
function beanmail_body(array $job, string $secret = ''): string
{
    $text = json_encode($job, JSON_UNESCAPED_UNICODE | JSON_UNESCAPED_SLASHES | JSON_PRESERVE_ZERO_FRACTION
                              | JSON_THROW_ON_ERROR);
    if ($secret === '') {
        return $text;
    }
    $key = trim(explode(',', $secret)[0]);  // the first key of the list signs
    return '{"v":2,"signed":' . $text . ',"sig":"' . hash_hmac('sha256', $text, $key) . '"}';
}

[$_, $host, $port, $template, $address, $name, $contextJson] = $argv;
$secret = $argv[7] ?? '';

$job = [
    'v' => 2,
    'kind' => 'mail',
    'id' => 'php:' . bin2hex(random_bytes(8)),
    'template' => $template,
    'to' => ['address' => $address, 'name' => $name],
    // objects stay objects ({} is not []), keys and numbers as given
    'context' => json_decode($contextJson, false, 512, JSON_THROW_ON_ERROR),
    'priority' => 'urgent',
    'created_at' => time(),
];

$pheanstalk = Pheanstalk::create($host, (int)$port);
$pheanstalk->useTube('mail.urgent');
$put = $pheanstalk->put(beanmail_body($job, $secret), 100, 0, 120);
echo $put->getId(), "\n";
