#!/usr/bin/perl
# Sisimai's verdict on every bounce in a folder, one JSON line per recipient:
#   {"file": NAME, "recipient": ADDR, "reason": R, "hardbounce": 0|1, "status": S, "action": A}
# A file Sisimai does not recognise gets one line with "recipient": null.
# Runs whichever Sisimai perl finds: Debian's libsisimai-perl (4.x, Sisimai->make) or a
# checkout of a newer one given with -I (5.x, Sisimai->rise). Usage:
#   perl scripts/sisimai_verdicts.pl FOLDER > verdicts.jsonl
use strict;
use warnings;
use JSON::PP;
use Sisimai;

my $folder = shift or die "usage: $0 FOLDER\n";
opendir(my $dh, $folder) or die "$folder: $!\n";
my @files = sort grep { !/^\./ && -f "$folder/$_" } readdir($dh);
sub hard {  # 5.x says hardbounce; 4.x says softbounce (1 soft, 0 hard, -1 neither)
    my $f = shift;
    return $f->hardbounce ? 1 : 0 if $f->can('hardbounce');
    return $f->softbounce == 0 ? 1 : 0;
}
my $json = JSON::PP->new->canonical(1);
my $rise = Sisimai->can('rise') ? 'rise' : 'make';
for my $name (@files) {
    my $path = "$folder/$name";
    my $facts = eval { Sisimai->$rise($path, 'delivered' => 1, 'vacation' => 1) } || [];
    if (!@$facts) {
        print $json->encode({ file => $name, recipient => undef, version => "$Sisimai::VERSION" }), "\n";
        next;
    }
    for my $f (@$facts) {
        print $json->encode({
            file => $name, recipient => lc($f->recipient->address), reason => $f->reason,
            hardbounce => hard($f), status => $f->deliverystatus // '', action => $f->action // '',
            smtpagent => $f->smtpagent // '', version => "$Sisimai::VERSION",
        }), "\n";
    }
}
