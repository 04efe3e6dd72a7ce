#!/bin/sh
# regimage bake, in bootcmd before cloud-init installs the packages: dpkg skips its fsyncs
# (force-unsafe-io) and man-db skips rebuilding its index after every package. Under TCG
# both cost minutes; in a throwaway VM that always powers off cleanly before its disk is
# converted, a lost write cannot happen unnoticed (the bake fails instead). bake-finish.sh
# undoes both before the image is reset, so the appliance's own upgrades are as safe as the
# distribution makes them.
#
#   sh -c "$script" regimage-bake-fast-dpkg DPKG_CFG MAN_DB_AUTO_UPDATE MAN_DB_MARKER
set -eu
dpkg_cfg=$1
man_db_auto_update=$2
man_db_marker=$3
printf '# regimage bake only: removed before the image is reset\nforce-unsafe-io\n' > "$dpkg_cfg"
if [ -e "$man_db_auto_update" ]; then
  rm -f "$man_db_auto_update"
  : > "$man_db_marker"
fi
