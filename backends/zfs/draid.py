"""dRAID: permutation maps, redundancy groups and distributed spares.

References (OpenZFS, tag zfs-2.3.9): module/zfs/vdev_draid.c (the ``draid_maps[]`` table
of seeds and checksums; vdev_draid_generate_perms: a Fisher-Yates shuffle of each row
starting from the previous one, the first from the identity; verify_perms: every row a
permutation and fletcher_4_native_varsize word 0 of the array equal to the table's
checksum; vdev_draid_get_perm / vdev_draid_permute_id; vdev_draid_asize and
vdev_draid_asize_to_psize; vdev_draid_logical_to_physical; vdev_draid_map_alloc_row and
vdev_draid_map_alloc: a block that crosses the end of a redundancy group is two rows;
vdev_draid_map_alloc_empty: skip sectors are zeros in the parity; vdev_draid_init: the
config checks; vdev_draid_spare_get_child: a distributed spare's sector lives on the
child at permutation column ``children - 1 - spare_id``), module/zfs/vdev_draid_rand.c
(xoroshiro128++), include/sys/vdev_draid.h (VDEV_DRAID_SEED, VDEV_DRAID_ROWHEIGHT =
SPA_MAXBLOCKSIZE), include/sys/fs/zfs.h (``draid_ndata``, ``draid_nspares``,
``draid_ngroups``, ``spareid``, ``top_guid``, vdev types ``draid`` and ``dspare``;
VDEV_DRAID_MAXPARITY 3, VDEV_DRAID_MAX_CHILDREN 255).  The parity is RAIDZ's (P, Q, R
over GF(2^8), see raidz.py) over every data column of the group, empty ones as zeros.

Vocabulary (vdev_draid.c): a *row* is 16 MiB of every child at the same offset; a
*group* is ``groupwidth = ndata + nparity`` columns, filled before the next one (groups
wrap from one row to the next); a *slice* is the ``ngroups`` groups of one permutation
(``ngroups * groupwidth / ndisks`` rows), ``ndisks = children - nspares``.  Permutation
``p`` of a slice is row ``(p / children) % nperms`` of the map, rotated by
``p % children``; its last ``nspares`` columns are the distributed spares' space.
Every block is allocated in whole group-width rows (fixed-width stripes): the columns
past the data are skip sectors, written as zeros and part of the parity.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

import numpy as np

from .checksum import fletcher4
from .errors import ZfsError

DRAID_SEED = 0xD7A1D5EED  # VDEV_DRAID_SEED
ROWSHIFT = 24  # VDEV_DRAID_ROWSHIFT = SPA_MAXBLOCKSHIFT
ROWHEIGHT = 1 << ROWSHIFT  # VDEV_DRAID_ROWHEIGHT: 16 MiB of each child per row
MAXPARITY = 3  # VDEV_DRAID_MAXPARITY
MIN_CHILDREN, MAX_CHILDREN = 2, 255  # VDEV_DRAID_MIN/MAX_CHILDREN
MAX_SPARES = 100  # vdev_draid_init

#: draid_maps[] of vdev_draid.c: (children, seed, checksum) for every supported child
#: count.  These are format constants (every dRAID pool depends on them); the map has 256
#: permutations below 32 children and 512 from 32 on (dm_nperms).  tests/test_zfs_draid.py
#: regenerates every map and checks it against its checksum.
_MAPS = (
    (2, 0x89ef3dabbcc7de37, 0x0000433d433d), (3, 0x89a57f3de98121b4, 0x0000bcd8b7b5),
    (4, 0xc9ea9ec82340c885, 0x0001819d7c69), (5, 0xf46733b7f4d47dfd, 0x0002a1648d74),
    (6, 0x88c3c62d8585b362, 0x0003d3b0c2c4), (7, 0x3a65d809b4d1b9d5, 0x00055c4183ee),
    (8, 0xe98930e3c5d2e90a, 0x0006edfb0329), (9, 0x5a5430036b982ccb, 0x0008ceaf6934),
    (10, 0x92bf389e9eadac74, 0x000b26668c09), (11, 0x74ccebf1dcf3ae80, 0x000dd691358c),
    (12, 0x8847e41a1a9f5671, 0x0010a0c63c8e), (13, 0x7481b56debf0e637, 0x001424121fe4),
    (14, 0x559b8c44065f8967, 0x0016ab2ff079), (15, 0x34c49545a2ee7f01, 0x001a6028efd6),
    (16, 0xb85f4fa81a7698f7, 0x001e95ff5e66), (17, 0x6353e47b7e47aba0, 0x0021a81fa0fe),
    (18, 0xaa549746b1cbb81c, 0x0026f02494c9), (19, 0x892e343f2f31d690, 0x0029eb392835),
    (20, 0x76914824db98cc3f, 0x003004f31a7c), (21, 0x4b3cbabf9cfb1d0f, 0x0036363a2408),
    (22, 0xf45c77abb4f035d4, 0x0038dd0f3e84), (23, 0x5e18bd7f3fd4baf4, 0x003f0660391f),
    (24, 0xa7b3a4d285d6503b, 0x00443dfc9ff6), (25, 0x56ac7dd967521f5a, 0x004b03a87eb7),
    (26, 0x3a42dfda4eb880f7, 0x00522c719bba), (27, 0xd200d2fc6b54bf60, 0x005760b4fdf5),
    (28, 0xc52605bbd486c546, 0x005e00d8f74c), (29, 0xc761779e63cd762f, 0x0067be3cd85c),
    (30, 0xca577b1e07f85ca5, 0x006f5517f3e4), (31, 0xfd50a593c518b3d4, 0x007370e7778f),
    (32, 0xc6c87ba5b042650b, 0x00f7eb08a156), (33, 0xc3880d0c9d458304, 0x010734b5d160),
    (34, 0xe920927e4d8b2c97, 0x0118c1edbce0), (35, 0x8da7fcda87bde316, 0x012a3e9f9110),
    (36, 0xcf09937491514a29, 0x013bd6a24bef), (37, 0x9b5abbf345cbd7cc, 0x014b9d90fac3),
    (38, 0x506312a44668d6a9, 0x015e1b5f6148), (39, 0x71659ede62b4755f, 0x0173ef029bcd),
    (40, 0xa7fde73fb74cf2d7, 0x01866fb72748), (41, 0x19e8b461a1dea1d3, 0x01a046f76b23),
    (42, 0x031c9b868cc3e976, 0x01afa64c49d3), (43, 0xbaa5125faa781854, 0x01c76789e278),
    (44, 0x4ed55052550d721b, 0x01d800ccd8eb), (45, 0x0fd63ddbdff90677, 0x01f08ad59ed2),
    (46, 0x36d66546de7fdd6f, 0x02016f09574b), (47, 0x99f997e7eafb69d7, 0x021e42e47cb6),
    (48, 0xbecd9c2571312c5d, 0x02320fe2872b), (49, 0xd97371329e488a32, 0x024cd73f2ca7),
    (50, 0x30e9b136670749ee, 0x02681c83b0e0), (51, 0x11ad6bc8f47aaeb4, 0x027e9261b5d5),
    (52, 0x68e445300af432c1, 0x029aa0eb7dbf), (53, 0x910fb561657ea98c, 0x02b3dca04853),
    (54, 0xd619693d8ce5e7a5, 0x02cc280e9c97), (55, 0x24e281f564dbb60a, 0x02e9fa842713),
    (56, 0x947a7d3bdaab44c5, 0x03046680f72e), (57, 0x2d44fec9c093e0de, 0x0324198ba810),
    (58, 0x87743c272d29bb4c, 0x033ec48c9ac9), (59, 0x96aa3b6f67f5d923, 0x034faead902c),
    (60, 0x94a4f1faf520b0d3, 0x037d713ab005), (61, 0xb13ed3a272f711a2, 0x0397368f3cbd),
    (62, 0x3b1b11805fa4a64a, 0x03b8a5e2840c), (63, 0x4c74caad9172ba71, 0x03d4be280290),
    (64, 0x035ff643923dd29e, 0x03fad6c355e1), (65, 0x768e9171b11abd3c, 0x040eb07fed20),
    (66, 0x75880e6f78a13ddd, 0x04433d6acf14), (67, 0x910b9714f698a877, 0x0451ea65d5db),
    (68, 0x87f5db6f9fdcf5c7, 0x04732169e3f7), (69, 0x836d4968fbaa3706, 0x04954068a380),
    (70, 0xc567d73a036421ab, 0x04bd7cb7bd3d), (71, 0x619df40f240b8fed, 0x04e376c2e972),
    (72, 0x42763a680d5bed8e, 0x05084275c680), (73, 0x5866f064b3230431, 0x052906f2c9ab),
    (74, 0x9fa08548b1621a44, 0x054708019247), (75, 0xb6053078ce0fc303, 0x0572cc5c72b0),
    (76, 0x4a7aad7bf3890923, 0x058e987bc8e9), (77, 0xe165613fd75b5a53, 0x05c20473a211),
    (78, 0x3ff154ac878163a6, 0x05d659194bf3), (79, 0x24b93ade0aa8a532, 0x060a201c4f8e),
    (80, 0xc18e2d14cd9bb554, 0x062c55cfe48c), (81, 0x98cc78302feb58b6, 0x066656a07194),
    (82, 0xc6c5fd5a2abc0543, 0x067cff94fbf8), (83, 0xa7962f514acbba21, 0x06ab7b5afa2e),
    (84, 0xba02545069ddc6dc, 0x06d19861364f), (85, 0x447c73192c35073e, 0x06fce315ce35),
    (86, 0x48beef9e2d42b0c2, 0x0720a8e38b6b), (87, 0x4874cf98541a35e0, 0x0758382a2273),
    (88, 0xad4cf8333a31127a, 0x0781e1651b1b), (89, 0x47ae4859d57888c1, 0x07b27edbe5bc),
    (90, 0x06f7723cfe5d1891, 0x07dc2a96d8eb), (91, 0xd4e44218d660576d, 0x080ac46f02d5),
    (92, 0x7066702b0d5be1f2, 0x0832c96d154e), (93, 0x011209b4f9e11fb9, 0x085eefda104c),
    (94, 0x47ffba30a0b35708, 0x0899badc32dc), (95, 0x1a95a6ac4538aaa8, 0x08b6b69a42b2),
    (96, 0xbda2b239bb2008eb, 0x08f22d2de38a), (97, 0x7ffa0bea90355c6c, 0x092e5b23b816),
    (98, 0x1d56ba34be426795, 0x094f482e5d1b), (99, 0x0aa89d45c502e93d, 0x0977d94a98ce),
    (100, 0x54369449f6857774, 0x09c06c9b34cc), (101, 0xf7d4dd8445b46765, 0x09e5dc542259),
    (102, 0xfa8866312f169469, 0x0a16b54eae93), (103, 0xd8a5aea08aef3ff9, 0x0a381d2cbfe7),
    (104, 0x66bcd2c3d5f9ef0e, 0x0a8191817be7), (105, 0x3fb13a47a012ec81, 0x0ab562b9a254),
    (106, 0x43100f01c9e5e3ca, 0x0aeee84c185f), (107, 0xca09c50ccee2d054, 0x0b1c359c047d),
    (108, 0xd7176732ac503f9b, 0x0b578bc52a73), (109, 0xed206e51f8d9422d, 0x0b8083e0d960),
    (110, 0x17ead5dc6ba0dcd6, 0x0bcfb1a32ca8), (111, 0x5f1dc21e38a969eb, 0x0c0171becdd6),
    (112, 0xddaa973de33ec528, 0x0c3edaba4b95), (113, 0x2a5eccd7735a3630, 0x0c630664e7df),
    (114, 0xafcccee5c0b71446, 0x0cb65392f6e4), (115, 0x8fa30c5e7b147e27, 0x0cd4db391e55),
    (116, 0x5afe0711fdfafd82, 0x0d08cb4ec35d), (117, 0x533a6090238afd4c, 0x0d336f115d1b),
    (118, 0x90cf11b595e39a84, 0x0d8e041c2048), (119, 0x0d61a3b809444009, 0x0dcb798afe35),
    (120, 0x7f34da0f54b0d114, 0x0df3922664e1), (121, 0xa52258d5b72f6551, 0x0e4d37a9872d),
    (122, 0xc1de54d7672878db, 0x0e6583a94cf6), (123, 0x1d03354316a414ab, 0x0ebffc50308d),
    (124, 0xcebdcc377665412c, 0x0edee1997cea), (125, 0x4ddd4c04b1a12344, 0x0f21d64b373f),
    (126, 0x64fc8f94e3973658, 0x0f8f87a8896b), (127, 0x68765f78034a334e, 0x0fb8fe62197e),
    (128, 0xaf36b871a303e816, 0x0fec6f3afb1e), (129, 0x2a4cbf73866c3a28, 0x1027febfe4e5),
    (130, 0x9cb128aacdcd3b2f, 0x106aa8ac569d), (131, 0x5511d41c55869124, 0x10bbd755ddf1),
    (132, 0x42f92461937f284a, 0x10fb8bceb3b5), (133, 0xe2d89a1cf6f1f287, 0x114cf5331e34),
    (134, 0xdc631a038956200e, 0x116428d2adc5), (135, 0xb2e5ac222cd236be, 0x11ca88e4d4d2),
    (136, 0xbc7d8236655d88e7, 0x11e39cb94e66), (137, 0x073e02d88d2d8e75, 0x123136c7933c),
    (138, 0x3ddb9c3873166be0, 0x1280e4ec6d52), (139, 0x7d3b1a845420e1b5, 0x12c2e7cd6a44),
    (140, 0x60102308aa7b2a6c, 0x12fc490e6c7d), (141, 0xdb22bb2f9eb894aa, 0x1343f5a85a1a),
    (142, 0xd853f879a13b1606, 0x13bb7d5f9048), (143, 0x001620a03f804b1d, 0x13e74cc794fd),
    (144, 0xfdb52dda76fbf667, 0x1442d2f22480), (145, 0xa9160110f66e24ff, 0x144b899f9dbb),
    (146, 0x77306a30379ae03b, 0x14cb98eb1f81), (147, 0x14f5985d2752319d, 0x14feab821fc9),
    (148, 0xa4b8ff11de7863f8, 0x154a0e60b9c9), (149, 0x44b345426455c1b3, 0x15999c3c569c),
    (150, 0x272677826049b46c, 0x15c9697f4b92), (151, 0x2f9216e2cd74fe40, 0x162b1f7bbd39),
    (152, 0x706ae3e763ad8771, 0x1661371c55e1), (153, 0xf7fd345307c2480e, 0x16e251f28b6a),
    (154, 0x6e94e3d26b3139eb, 0x16f2429bb8c6), (155, 0x5458bbfbb781fcba, 0x173efdeca1b9),
    (156, 0xa80e2afeccd93b33, 0x17bfdcb78adc), (157, 0x1e4ccbb22796cf9d, 0x1826fdcc39c9),
    (158, 0x8fba4b676aaa3663, 0x1841a1379480), (159, 0xf82b843814b315fa, 0x18886e19b8a3),
    (160, 0x7f21e920ecf753a3, 0x191812ca0ea7), (161, 0x48bb8ea2c4caa620, 0x192f310faccf),
    (162, 0x5cdb652b4952c91b, 0x199e1d7437c7), (163, 0x6ac1ba6f78c06cd4, 0x19cd11f82c70),
    (164, 0x9faf5f9ca2669a56, 0x1a18d5431f6a), (165, 0xaa57e9383eb01194, 0x1a9e7d253d85),
    (166, 0x896967bf495c34d2, 0x1afb8319b9fc), (167, 0xdfad5f05de225f1b, 0x1b3a59c3093b),
    (168, 0xfd299a99f9f2abdd, 0x1bb6f1a10799), (169, 0xdda239e798fe9fd4, 0x1bfae0c9692d),
    (170, 0x5fca670414a32c3e, 0x1c22129dbcff), (171, 0x1bb8934314b087de, 0x1c955db36cd0),
    (172, 0xd96394b4b082200d, 0x1cfc8619b7e6), (173, 0xb612a7735b1c8cbc, 0x1d303acdd585),
    (174, 0x28e7430fe5875fe1, 0x1d7ed5b3697d), (175, 0x5038e89efdd981b9, 0x1dc40ec35c59),
    (176, 0x075fd78f1d14db7c, 0x1e31c83b4a2b), (177, 0xc50fafdb5021be15, 0x1e7cdac82fbc),
    (178, 0xe6dc7572ce7b91c7, 0x1edd8bb454fc), (179, 0x21f7843e7beda537, 0x1f3a8e019d6c),
    (180, 0xc83385e20b43ec82, 0x1f70735ec137), (181, 0xca818217dddb21fd, 0x201ca44c5a3c),
    (182, 0xe6035defea48f933, 0x2038e3346658), (183, 0x47262a4f953dac5a, 0x20c2e554314e),
    (184, 0xe24c7246260873ea, 0x21197e618d64), (185, 0xeef6b57c9b58e9e1, 0x217ea48ecddc),
    (186, 0x2becd3346e386142, 0x21c496d4a5f9), (187, 0x63c6207bdf3b40a3, 0x220e0f2eec0c),
    (188, 0x3056ce8989767d4b, 0x228eb76cd137), (189, 0x91af61c307cee780, 0x22e17e2ea501),
    (190, 0xda359da225f6d54f, 0x2358a2debc19), (191, 0x0a5f7a2a55607ba0, 0x238a79dac18c),
    (192, 0x27bb75bf5224638a, 0x2403a58e2351), (193, 0x1ebfdb94630f5d0f, 0x2492a10cb339),
    (194, 0x6eae5e51d9c5f6fb, 0x24ce4bf98715), (195, 0x08d903b4daedc2e0, 0x250d1e15886c),
    (196, 0xc722a2f7fa7cd686, 0x258a99ed0c9e), (197, 0x8f71faf0e54e361d, 0x25dee11976f5),
    (198, 0x87f64695c91a54e7, 0x264e00a43da0), (199, 0xc719cbac2c336b92, 0x26d327277ac1),
    (200, 0xe7e647afaf771ade, 0x27523a5c44bf), (201, 0x12d4b5c38ce8c946, 0x273898432545),
    (202, 0xf2e0cd4067bdc94a, 0x27e47bb2c935), (203, 0x21b79f14d6d947d3, 0x281e64977f0d),
    (204, 0x515093f952f18cd6, 0x289691a473fd), (205, 0xd47b160a1b1022c8, 0x2903e8b52411),
    (206, 0xc02fc96684715a16, 0x297515608601), (207, 0xef51e68efba72ed0, 0x29ef73604804),
    (208, 0x9e3be6e5448b4f33, 0x2a2846ed074b), (209, 0x81d446c6d5fec063, 0x2a92ca693455),
    (210, 0xff215de8224e57d5, 0x2b2271fe3729), (211, 0xe2524d9ba8f69796, 0x2b64b99c3ba2),
    (212, 0xf6b28e26097b7e4b, 0x2bd768b6e068), (213, 0x893a487f30ce1644, 0x2c67f722b4b2),
    (214, 0x386566c3fc9871df, 0x2cc1cf8b4037), (215, 0x1e0ed78edf1f558a, 0x2d3948d36c7f),
    (216, 0xe3bc20c31e61f113, 0x2d6d6b12e025), (217, 0xd6c3ad2e23021882, 0x2deff7572241),
    (218, 0xb4a9f95cf0f69c5a, 0x2e67d537aa36), (219, 0x6e98ed6f6c38e82f, 0x2e9720626789),
    (220, 0x2e01edba33fddac7, 0x2f407c6b0198), (221, 0x559d02e1f5f57ccc, 0x2fb6a5ab4f24),
    (222, 0xac18f5a916adcd8e, 0x304ae1c5c57e), (223, 0x15789fbaddb86f4b, 0x306f6e019c78),
    (224, 0xf4a9c36d5bc4c408, 0x30da40434213), (225, 0xf640f90fd2727f44, 0x3189ed37b90c),
    (226, 0xb5313d390d61884a, 0x31e152616b37), (227, 0x4bae6b3ce9160939, 0x321f40aeac42),
    (228, 0x838c34480f1a66a1, 0x32f389c0f78e), (229, 0xb1c4a52c8e3d6060, 0x330062a40284),
    (230, 0xe0f1110c6d0ed822, 0x338be435644f), (231, 0x9f1a8ccdcea68d4b, 0x34045a4e97e1),
    (232, 0x3261ed62223f3099, 0x34702cfc401c), (233, 0xf2191e2311022d65, 0x3509dd19c9fc),
    (234, 0xf102a395c2033abc, 0x35654dc96fae), (235, 0x11fe378f027906b6, 0x35b5193b0264),
    (236, 0xf777f2c026b337aa, 0x36704f5d9297), (237, 0x1b04e9c2ee143f32, 0x36dfbb7af218),
    (238, 0x2fcec95266f9352c, 0x3785c8df24a9), (239, 0xfe2b0e47e427dd85, 0x37cbdf5da729),
    (240, 0x72b49bf2225f6c6d, 0x382227c15855), (241, 0x50486b43df7df9c7, 0x389b88be6453),
    (242, 0x5192a3e53181c8ab, 0x38ddf3d67263), (243, 0xe9f5d8365296fd5e, 0x399f1c6c9e9c),
    (244, 0xc740263f0301efa8, 0x3a147146512d), (245, 0x23cd0f2b5671e67d, 0x3ab10bcc0d9d),
    (246, 0x002ccc7e5cd41390, 0x3ad6cd14a6c0), (247, 0x9aafb3c02544b31b, 0x3b8cb8779fb0),
    (248, 0x72ba07a78b121999, 0x3c24142a5a3f), (249, 0x3d784aa58edfc7b4, 0x3cd084817d99),
    (250, 0xaab750424d8004af, 0x3d506a8e098e), (251, 0x84403fcf8e6b5ca2, 0x3d4c54c2aec4),
    (252, 0x71eb7455ec98e207, 0x3e655715cf2c), (253, 0xd752b4f19301595b, 0x3ecd7b2ca5ac),
    (254, 0xc4674129750499de, 0x3e99e86d3e95), (255, 0x9772baff5cd12ef5, 0x3f895c019841),
)
MAPS = {c: (256 if c < 32 else 512, seed, ck) for c, seed, ck in _MAPS}

_M64 = (1 << 64) - 1


def _rotl(x, k):
    return ((x << np.uint64(k)) | (x >> np.uint64(64 - k)))


def generate_perms(children_list) -> dict:
    """vdev_draid_generate_perms for several child counts at once (numpy lanes, one per
    map: the PRNG and the shuffles of different maps are independent).

    Returns ``{children: uint8 array (nperms, children)}``, unverified (see
    :func:`verify_perms`).  The generator is xoroshiro128++ (vdev_draid_rand.c) seeded
    with ``{VDEV_DRAID_SEED, dm_seed}``; each row starts as a copy of the previous one
    (the first as 0..children-1) and is shuffled with ``k = rand() % (j + 1)`` for ``j``
    from ``children - 1`` down to 1, swapping columns ``j`` and ``k``.
    """
    kids = sorted(set(children_list))
    for c in kids:
        if c not in MAPS:
            raise ZfsError(f"draid: no permutation map for {c} children")
    if not kids:
        return {}
    m = len(kids)
    ch = np.array(kids, dtype=np.int64)
    nperms = np.array([MAPS[c][0] for c in kids], dtype=np.int64)
    width = int(ch.max())
    s0 = np.full(m, DRAID_SEED, dtype=np.uint64)
    s1 = np.array([MAPS[c][1] for c in kids], dtype=np.uint64)
    row = np.tile(np.arange(width, dtype=np.int64), (m, 1))
    out = np.zeros((m, int(nperms.max()), width), dtype=np.uint8)
    lanes = np.arange(m)
    with np.errstate(over="ignore"):
        for i in range(int(nperms.max())):
            live_rows = nperms > i
            for j in range(width - 1, 0, -1):
                live = live_rows & (ch > j)
                if not live.any():
                    continue
                if not live.all():
                    # only the maps still shuffling draw a number
                    idx = lanes[live]
                    a, b = s0[idx], s1[idx]
                else:
                    idx = lanes
                    a, b = s0, s1
                result = _rotl(a + b, 17) + a
                b = b ^ a
                s0[idx] = _rotl(a, 49) ^ b ^ (b << np.uint64(21))
                s1[idx] = _rotl(b, 28)
                k = (result % np.uint64(j + 1)).astype(np.int64)
                vj = row[idx, j]
                row[idx, j] = row[idx, k]
                row[idx, k] = vj
            out[live_rows, i, :] = row[live_rows]
    return {c: out[n, :MAPS[c][0], :c].copy() for n, c in enumerate(kids)}


def verify_perms(children: int, perms: np.ndarray) -> bool:
    """verify_perms: every row a permutation of 0..children-1 and word 0 of
    fletcher_4_native over the array (little-endian 32-bit words, as the x86 kernel
    computed the table) equal to the table's checksum."""
    nperms, _seed, checksum = MAPS[children]
    if perms.shape != (nperms, children):
        return False
    if not (np.sort(perms, axis=1) == np.arange(children, dtype=np.uint8)).all():
        return False
    return fletcher4(perms.tobytes(), True)[0] == checksum


@functools.lru_cache(maxsize=8)
def perms_for(children: int) -> np.ndarray:
    """The verified permutation map of a dRAID with ``children`` children."""
    perms = generate_perms([children])[children]
    if not verify_perms(children, perms):  # would be a bug here: the map is fixed
        raise ZfsError(f"draid: the permutation map for {children} children does not "
                       f"match its checksum")
    perms.setflags(write=False)
    return perms


@dataclass(frozen=True)
class Column:
    dev: int  # child index of the dRAID vdev
    offset: int  # byte offset on the child (after the 4 MiB of labels and boot block)
    size: int  # bytes of the block in this column (0: only a skip sector)


@dataclass(frozen=True)
class Row:
    """One raidz_row_t of a dRAID block: ``columns[:nparity]`` are parity, each
    ``parity_size`` bytes; data columns shorter than that end in zero skip sectors."""
    columns: tuple
    parity_size: int
    size: int  # the block bytes this row holds (rounded up to whole sectors)


@dataclass(frozen=True)
class Geometry:
    """vdev_draid_config_t: the label's ``nparity``, ``draid_ndata``, ``draid_nspares``,
    ``draid_ngroups`` and child count, and the vdev's ashift."""
    ndata: int
    nparity: int
    nspares: int
    children: int
    ngroups: int
    ashift: int = 9

    @property
    def groupwidth(self):
        return self.ndata + self.nparity

    @property
    def ndisks(self):
        return self.children - self.nspares

    @property
    def groupsz(self):
        return self.groupwidth * ROWHEIGHT

    @property
    def devslicesz(self):
        return self.groupsz * self.ngroups // self.ndisks

    @property
    def nperms(self):
        return MAPS[self.children][0]

    def check(self):
        """vdev_draid_init's checks (and its assertions): a ZfsError names the bad field."""
        for name in ("ndata", "nparity", "nspares", "children", "ngroups", "ashift"):
            if not isinstance(getattr(self, name), int) or isinstance(getattr(self, name), bool):
                raise ZfsError(f"draid: {name} is {getattr(self, name)!r}")
        if not 1 <= self.nparity <= MAXPARITY:
            raise ZfsError(f"draid: nparity {self.nparity}")
        if self.children not in MAPS:
            raise ZfsError(f"draid: {self.children} children (2-255 are supported)")
        if self.ndata < 1 or not 0 <= self.nspares <= MAX_SPARES \
                or self.nspares > self.children - self.groupwidth:
            raise ZfsError(f"draid: {self.ndata} data + {self.nparity} parity + "
                           f"{self.nspares} spares do not fit {self.children} children")
        if not 1 <= self.ngroups <= MAX_CHILDREN \
                or (self.groupwidth * self.ngroups) % self.ndisks \
                or self.devslicesz % ROWHEIGHT:
            raise ZfsError(f"draid: {self.ngroups} groups of {self.groupwidth} do not fill "
                           f"whole rows of {self.ndisks} disks")
        if not 9 <= self.ashift <= 16:
            raise ZfsError(f"draid: ashift {self.ashift}")
        return self

    # -- vdev_draid.c arithmetic -----------------------------------------------------
    def perm(self, pindex: int):
        """vdev_draid_get_perm: (map row, rotation) of permutation number ``pindex``."""
        poff = pindex % (self.nperms * self.children)
        return perms_for(self.children)[poff // self.children], poff % self.children

    def asize(self, psize: int) -> int:
        """vdev_draid_asize: ``psize`` rounded up to whole group-width rows."""
        rows = (psize - 1) // (self.ndata << self.ashift) + 1
        return (rows * self.groupwidth) << self.ashift

    def asize_to_psize(self, asize: int) -> int:
        return asize // self.groupwidth * self.ndata

    def logical_to_physical(self, offset: int):
        """vdev_draid_logical_to_physical -> (child byte offset, permutation, group start
        column) of the group chunk holding ``offset``."""
        rowheight = ROWHEIGHT >> self.ashift
        gw = self.groupwidth
        group = offset // self.groupsz
        groupstart = (group * gw) % self.ndisks
        b = (offset >> self.ashift) % (rowheight * gw)
        perm = group // self.ngroups
        row = perm * (gw * self.ngroups // self.ndisks) + (group % self.ngroups) * gw \
            // self.ndisks
        return (rowheight * row + b // gw) << self.ashift, perm, groupstart

    def _row(self, offset: int, size: int):
        """vdev_draid_map_alloc_row: the row at ``offset`` holding up to ``size`` bytes
        (whole sectors) of the block -> (bytes it holds, Row)."""
        ashift = self.ashift
        group = offset // self.groupsz
        end = (group + 1) * self.groupsz
        if offset + self.asize(size) > end:
            size = self.asize_to_psize(end - offset)  # the rest is the next group's
        physical, perm, groupstart = self.logical_to_physical(offset)
        gw, ndisks = self.groupwidth, self.ndisks
        wrap = ndisks - groupstart if groupstart + gw > ndisks else gw
        psize = size >> ashift
        q, r = divmod(psize, self.ndata)
        bc = r + self.nparity if r else 0
        base, it = self.perm(perm)
        cols = []
        for i in range(gw):
            if i == wrap:
                physical += ROWHEIGHT  # the group goes on in the next row
            c = (groupstart + i) % ndisks
            dev = (int(base[c]) + it) % self.children
            if q == 0 and i >= bc:
                csize = 0
            elif i < bc:
                csize = (q + 1) << ashift
            else:
                csize = q << ashift
            cols.append(Column(dev, physical, csize))
        return size, Row(tuple(cols), cols[0].size, size)

    def map_block(self, offset: int, size: int):
        """vdev_draid_map_alloc: the rows (one, or two when the block crosses the end of
        its group) of the block of ``size`` bytes at DVA offset ``offset``.  The size is
        first rounded up to whole sectors, as zio_vdev_io_start pads the I/O."""
        unit = 1 << self.ashift
        size = -(-size // unit) * unit
        if size <= 0 or offset < 0 or offset % unit:
            raise ZfsError(f"draid: block of {size} bytes at offset {offset}")
        done, row = self._row(offset, size)
        rows = [row]
        if done < size:
            nxt = offset + self.asize(done)
            done2, row2 = self._row(nxt, size - done)
            if done2 != size - done:
                raise ZfsError(f"draid: block of {size} bytes at {offset} spans more "
                               f"than two groups")
            rows.append(row2)
        return rows

    def spare_child(self, spare_id: int, offset: int) -> int:
        """vdev_draid_spare_get_child: the child holding distributed spare ``spare_id``'s
        bytes at child offset ``offset``: permutation column ``children - 1 - spare_id``
        of the slice's permutation."""
        if not 0 <= spare_id < self.nspares:
            raise ZfsError(f"draid: spare id {spare_id} of {self.nspares}")
        base, it = self.perm(offset // self.devslicesz)
        return (int(base[self.children - 1 - spare_id]) + it) % self.children
