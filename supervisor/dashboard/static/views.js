// The pages by their first path segment (#/service/web -> service).
import { CLUSTER_VIEWS } from "./cluster.js";
import { RUN_VIEWS } from "./runs.js";
import { SERVICE_VIEWS } from "./services.js";

export const VIEWS = { ...SERVICE_VIEWS, ...RUN_VIEWS, ...CLUSTER_VIEWS };
