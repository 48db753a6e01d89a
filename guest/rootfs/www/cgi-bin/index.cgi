#!/bin/sh
# The guest's page (busybox httpd serves /cgi-bin/index.cgi for /): its
# hostname, addresses, instance and user data's outcome, and /etc/motd.
export PATH=/sbin:/bin:/usr/sbin:/usr/bin
escape() { sed -e 's/&/\&amp;/g' -e 's/</\&lt;/g' -e 's/>/\&gt;/g'; }
host=$(hostname | escape)
printf 'Content-Type: text/html; charset=utf-8\r\n\r\n'
cat <<PAGE
<!doctype html>
<html><head><title>$host</title></head>
<body>
<h1>$host</h1>
<pre>
hostname: $host
PAGE
ip -o addr show scope global | awk '{printf "address: %s %s\n", $2, $4}' | escape
echo "instance-id: $(cat /run/tiny/instance-id 2>/dev/null | escape)"
echo "user-data: $(cat /run/tiny/user-data.status 2>/dev/null || echo none)"
echo "uptime: $(cut -d' ' -f1 /proc/uptime) s"
echo "</pre>"
if [ -s /etc/motd ]; then
    echo "<pre class=\"motd\">"
    escape < /etc/motd
    echo "</pre>"
fi
echo "</body></html>"
