"""ext2/ext3/ext4 guest filesystems: pvfs's own reader (see README.md).

The reader is being built up on branch ``ext4``; until the directory walk lands the
package registers no backend, so discovery is unchanged.  ``superblock`` is usable now
(the journal-replay work builds on it).
"""

from __future__ import annotations

BACKENDS: list = []
