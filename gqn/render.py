"""A small numpy ray caster: a room, spheres, boxes and vertical cylinders, Lambert-shaded with shadows.

World frame: z is up. A camera is DeepMind's (x, y, z, yaw, pitch): yaw turns the viewing direction
about z from the +x axis, pitch raises it above the horizontal plane. All views of a scene are cast
as one batch of N rays; each intersect_* returns (t (N,), index (N,), normals (N, 3)) of the
nearest primitive of its kind, with t = FAR where the ray misses.
"""
from collections import namedtuple

import numpy as np

# A set of primitives of one kind: each field has a leading count axis C.
Spheres = namedtuple("Spheres", ["centers", "radii", "colors"])  # (C, 3), (C,), (C, 3)
Boxes = namedtuple("Boxes", ["centers", "halves", "yaws", "colors"])  # (C, 3), (C, 3), (C,), (C, 3)
Cylinders = namedtuple("Cylinders", ["bases", "radii", "heights", "colors"])  # base centres (C, 3)
# An axis-aligned room seen from inside; face colours (6, 3) in the order -x, +x, -y, +y, floor, ceiling.
Room = namedtuple("Room", ["half_width", "height", "face_colors"])
# Point lights at positions (L, 3) with strengths (L,); ambient light and background colour (3,).
Scene = namedtuple("Scene", ["objects", "room", "lights", "strengths", "ambient", "background"])

FAR = np.float32(1e9)
_EPS = 1e-4
_CHECKER = 0.5  # floor tile size: the pattern makes distance and perspective visible


def camera_rays(cameras, size, fov_degrees):
    """Origins (N, 3) and unit directions (N, 3) of size*size rays per camera (V, 5); N = V*size^2."""
    x, y, z, yaw, pitch = (cameras[:, i, None, None, None] for i in range(5))  # each (V, 1, 1, 1)
    forward = np.concatenate([np.cos(pitch) * np.cos(yaw), np.cos(pitch) * np.sin(yaw),
                              np.sin(pitch)], -1)  # (V, 1, 1, 3)
    right = np.concatenate([np.sin(yaw), -np.cos(yaw), np.zeros_like(yaw)], -1)
    up = np.cross(right, forward)
    grid = (2 * (np.arange(size) + 0.5) / size - 1) * np.tan(np.radians(fov_degrees) / 2)
    across, down = grid[None, None, :, None], grid[None, :, None, None]  # columns, rows
    directions = forward + across * right - down * up  # (V, H, W, 3)
    directions /= np.linalg.norm(directions, axis=-1, keepdims=True)
    origins = np.broadcast_to(np.concatenate([x, y, z], -1), directions.shape)
    return origins.reshape(-1, 3).astype(np.float32), directions.reshape(-1, 3).astype(np.float32)


def _nearest(t):
    """(t (N,), index (N,)) of the nearest hit over the last axis of t (N, C)."""
    index = np.argmin(t, axis=1)
    return np.take_along_axis(t, index[:, None], 1)[:, 0], index


def _ahead(t, valid):
    """t where it is a valid hit in front of the ray origin, else FAR."""
    return np.where(valid & (t > _EPS), t, FAR)


def _rotate_z(v, angles):
    """Rotate vectors v (N, 3) about z by angles (N,)."""
    c, s = np.cos(angles), np.sin(angles)
    return np.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1], v[:, 2]], -1)


def _columns(v):
    """The x, y, z columns of v (N, 3), each (N, 1), to broadcast against C primitives."""
    return v[:, 0:1], v[:, 1:2], v[:, 2:3]


def intersect_spheres(origins, directions, spheres):
    """Nearest sphere along each ray."""
    ox, oy, oz = (o - c for o, c in zip(_columns(origins), spheres.centers.T))  # each (N, C)
    dx, dy, dz = _columns(directions)
    b = ox * dx + oy * dy + oz * dz
    disc = b * b - (ox * ox + oy * oy + oz * oz) + spheres.radii ** 2
    t, index = _nearest(_ahead(-b - np.sqrt(np.maximum(disc, 0)), disc >= 0))
    points = origins + t[:, None] * directions
    return t, index, (points - spheres.centers[index]) / spheres.radii[index, None]


def _slabs(o, d, half):
    """(near, far) crossings of one slab |x| <= half, for o, d, half broadcast to (N, C)."""
    inverse = 1 / np.where(np.abs(d) < 1e-9, np.float32(1e-9), d)  # parallel rays never cross
    t1, t2 = (-half - o) * inverse, (half - o) * inverse
    return np.minimum(t1, t2), np.maximum(t1, t2)


def intersect_boxes(origins, directions, boxes):
    """Nearest box (each turned by its yaw about z) along each ray, by the slab method."""
    px, py, pz = (o - k for o, k in zip(_columns(origins), boxes.centers.T))  # (N, C)
    dx, dy, dz = _columns(directions)  # (N, 1)
    if boxes.yaws.any():  # turn the rays into each box's frame (axis-aligned boxes need not)
        c, s = np.cos(boxes.yaws), np.sin(boxes.yaws)  # (C,)
        px, py, dx, dy = c * px + s * py, c * py - s * px, c * dx + s * dy, c * dy - s * dx
    near, far = zip(*(_slabs(o, d, h) for o, d, h in zip((px, py, pz), (dx, dy, dz), boxes.halves.T)))
    t_in = np.maximum(np.maximum(near[0], near[1]), near[2])
    t_out = np.minimum(np.minimum(far[0], far[1]), far[2])
    t, index = _nearest(_ahead(t_in, t_in <= t_out))
    rows = np.arange(len(t))
    axis = np.argmax(np.stack([n[rows, index] for n in near], -1), -1)  # the slab entered through
    d_box = np.stack([np.broadcast_to(d, px.shape)[rows, index] for d in (dx, dy, dz)], -1)
    local = np.zeros((len(t), 3), np.float32)
    local[rows, axis] = -np.sign(d_box[rows, axis])
    return t, index, _rotate_z(local, boxes.yaws[index])


def intersect_cylinders(origins, directions, cylinders):
    """Nearest upright cylinder (side, top and bottom caps) along each ray."""
    ox, oy, oz = (o - b for o, b in zip(_columns(origins), cylinders.bases.T))  # (N, C)
    dx, dy, dz = _columns(directions)
    a = np.maximum(dx * dx + dy * dy, 1e-12)
    b = ox * dx + oy * dy
    disc = b * b - a * (ox * ox + oy * oy - cylinders.radii ** 2)
    t_side = (-b - np.sqrt(np.maximum(disc, 0))) / a
    z_side = oz + t_side * dz
    t_side = _ahead(t_side, (disc >= 0) & (z_side >= 0) & (z_side <= cylinders.heights))
    dz = np.where(np.abs(dz) < 1e-9, np.float32(1e-9), dz)
    t_caps = []
    for level in (cylinders.heights, 0):  # top, bottom
        t_cap = (level - oz) / dz
        x, y = ox + t_cap * dx, oy + t_cap * dy
        t_caps.append(_ahead(t_cap, x * x + y * y <= cylinders.radii ** 2))
    t, index = _nearest(np.minimum(t_side, np.minimum(*t_caps)))
    rows = np.arange(len(t))
    points = origins + t[:, None] * directions - cylinders.bases[index]  # base frame
    radial = points * np.array([1, 1, 0], np.float32) / cylinders.radii[index, None]
    top, bottom = (t == t_cap[rows, index] for t_cap in t_caps)
    cap_normal = np.where(top, 1.0, -1.0)[:, None] * np.array([0, 0, 1], np.float32)
    return t, index, np.where((top | bottom)[:, None], cap_normal, radial)


def intersect_room(origins, directions, room):
    """(t, face index, normals) where rays from inside the room leave it."""
    low = np.array([-room.half_width, -room.half_width, 0], np.float32)
    high = np.array([room.half_width, room.half_width, room.height], np.float32)
    d = np.where(np.abs(directions) < 1e-9, 1e-9, directions)
    t_axes = np.where(d > 0, high - origins, low - origins) / d  # (N, 3)
    axis = np.argmin(t_axes, -1)
    rows = np.arange(len(axis))
    positive = d[rows, axis] > 0
    normals = np.zeros_like(d)
    normals[rows, axis] = np.where(positive, -1.0, 1.0)
    return t_axes[rows, axis], 2 * axis + positive, normals


_INTERSECT = {"Spheres": intersect_spheres, "Boxes": intersect_boxes,
              "Cylinders": intersect_cylinders}


def _bounding_sphere(group):
    """(centre (3,), radius) of a sphere holding every primitive of the group."""
    kind = type(group).__name__
    if kind == "Spheres":
        centers, radii = group.centers, group.radii
    elif kind == "Boxes":
        centers, radii = group.centers, np.linalg.norm(group.halves, axis=-1)
    else:
        centers = group.bases + np.stack([0 * group.heights, 0 * group.heights, group.heights / 2], -1)
        radii = np.hypot(group.radii, group.heights / 2)
    center = centers.mean(0)
    return center, np.max(np.linalg.norm(centers - center, axis=-1) + radii) + _EPS


def intersect_group(origins, directions, group):
    """(t, index, normals) of a group of objects, testing only the rays that meet its bound."""
    center, radius = _bounding_sphere(group)
    oc = origins - center
    b = np.einsum("nk,nk->n", oc, directions)
    rays = np.flatnonzero(b * b - np.einsum("nk,nk->n", oc, oc) + radius ** 2 >= 0)
    t = np.full(len(origins), FAR)
    index = np.zeros(len(origins), np.int64)
    normals = np.zeros((len(origins), 3), np.float32)
    if len(rays):
        t[rays], index[rays], normals[rays] = _INTERSECT[type(group).__name__](
            origins[rays], directions[rays], group)
    return t, index, normals


def trace(origins, directions, scene):
    """(t (N,), normals (N, 3), albedo (N, 3), on_object (N,) bool) of the first surface each ray meets."""
    t = np.full(len(origins), FAR)
    normals = np.zeros((len(origins), 3), np.float32)
    albedo = np.broadcast_to(np.asarray(scene.background, np.float32), normals.shape).copy()
    on_object = np.zeros(len(origins), bool)
    groups = [(g, intersect_group, g.colors) for g in scene.objects]
    if scene.room is not None:
        groups.append((scene.room, intersect_room, scene.room.face_colors))
    for group, intersect, colors in groups:
        t_group, index, n_group = intersect(origins, directions, group)
        closer = t_group < t
        t[closer], normals[closer], albedo[closer] = t_group[closer], n_group[closer], colors[index[closer]]
        on_object[closer] = group is not scene.room
        if group is scene.room:
            _checker_floor(albedo, origins + t[:, None] * directions, closer & (index == 4))
    return t, normals, albedo, on_object


def _checker_floor(albedo, points, on_floor):
    """Darken alternate floor tiles in place."""
    tiles = np.floor(points[on_floor, :2] / _CHECKER).sum(-1) % 2
    albedo[on_floor] *= (0.88 + 0.12 * tiles)[:, None]


def _lit(points, normals, position, objects):
    """Lambert factor (M,) of surface points lit by a point light, 0 where an object shadows them."""
    to_light = position - points
    distance = np.linalg.norm(to_light, axis=-1)
    to_light /= distance[:, None]
    lambert = np.maximum(np.einsum("nk,nk->n", normals, to_light), 0)
    facing = np.flatnonzero(lambert > 0)
    for group in objects:
        blocked = intersect_group(points[facing], to_light[facing], group)[0] < distance[facing]
        lambert[facing[blocked]] = 0
    return lambert


def shade(origins, directions, scene):
    """(colours (N, 3) in [0, 1], on_object (N,) bool): albedo times (ambient + Lambert light of each light,
    with shadows), and which rays first meet an object (not the room or the background)."""
    t, normals, albedo, on_object = trace(origins, directions, scene)
    hit = np.flatnonzero(t < FAR)
    points = origins[hit] + t[hit, None] * directions[hit] + 10 * _EPS * normals[hit]
    light = np.full(len(hit), scene.ambient, np.float32)
    for position, strength in zip(scene.lights, scene.strengths):
        light += strength * _lit(points, normals[hit], position, scene.objects)
    albedo[hit] *= light[:, None]
    return np.clip(albedo, 0, 1), on_object


def render_with_masks(scene, cameras, size, fov_degrees):
    """(images (V, size, size, 3) uint8 RGB, object masks (V, size, size) bool) of the scene from each camera (V, 5).

    A mask is True where the view shows an object; shadows that objects cast on the room are not part of it.
    """
    colors, on_object = shade(*camera_rays(cameras, size, fov_degrees), scene)
    images = np.round(colors * 255).astype(np.uint8).reshape(len(cameras), size, size, 3)
    return images, on_object.reshape(len(cameras), size, size)


def render(scene, cameras, size, fov_degrees):
    """Images (V, size, size, 3) uint8 RGB of the scene from each camera (V, 5)."""
    return render_with_masks(scene, cameras, size, fov_degrees)[0]


def object_masks(scene, cameras, size, fov_degrees):
    """render_with_masks's masks (V, size, size) bool alone, without shading (a fraction of the cost)."""
    on_object = trace(*camera_rays(cameras, size, fov_degrees), scene)[3]
    return on_object.reshape(len(cameras), size, size)
